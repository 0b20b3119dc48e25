"""dvc.yaml's code dependencies follow the imports: each stage lists every harclip module its
entry point can import (at the top or inside a function), so changing code a stage runs reruns
it. A module missing from a stage's deps would leave `dvc status` clean over changed code."""

import ast

import pytest
import yaml

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "harclip"
STAGES = {"check_params": "config", "download": "download", "preprocess": "preprocess",
          "train_clip": "train", "train_sglip": "train", "train_aclip": "train",
          "evaluate": "evaluate", "plot": "plot"}


def imported_modules(name: str) -> set[str]:
    """The harclip modules `name` reaches through its imports, itself included."""
    seen, todo = set(), [name]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "harclip":
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harclip."):
                todo.append(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                todo += [alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("harclip.")]
    return seen


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_depends_on_every_module_it_imports(stage):
    deps = set(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"])
    needed = {f"src/harclip/{module}.py" for module in imported_modules(STAGES[stage])}
    assert not needed - deps, f"{stage}: add {sorted(needed - deps)} to its deps"


def test_the_import_walk_follows_lazy_imports():
    assert {"training", "engine", "models"} <= imported_modules("train")  # inside main()
