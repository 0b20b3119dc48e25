"""harclip's import graph, read from the source with `ast` (imports inside functions count as
much as those at the top): what the layout and dvc.yaml's deps are checked against."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from tests.support import REPO_ROOT

SOURCE = REPO_ROOT / "src"


@cache
def modules() -> dict[str, Path]:
    """Every harclip module by dotted name (a package by its own name, for its __init__)."""
    found = {}
    for path in (SOURCE / "harclip").rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


@cache
def imports(module: str) -> frozenset[str]:
    """The harclip modules `module` imports, anywhere in its file."""
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(known[module].read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module == "harclip" or
                                                 (node.module or "").startswith("harclip.")):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names
                         if alias.name.startswith("harclip."))
    unknown = found - known.keys()
    assert not unknown, f"{module} imports modules that do not exist: {sorted(unknown)}"
    return frozenset(found - {module})


def reached(module: str) -> set[str]:
    """`module` and every harclip module its imports reach."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += imports(current)
    return seen


def package(module: str) -> str:
    """The top-level package a module is in (`harclip.model.feed` → `model`)."""
    return module.split(".")[1]
