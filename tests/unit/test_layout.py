"""The package's layout holds (docs/architecture.md): no import circle, no upward import
between layers, the stage packages independent of each other, the command-line harness only
in entry points, no module over 400 lines. Read from the source with `ast`: imports inside
functions count as much as those at the top."""

from __future__ import annotations

from tests.support.imports import SOURCE, imports, modules, package, reached

LAYERS = {"runtime": 0, "config": 1, "data": 2, "model": 3}
"""Each package of a lower layer; every other package is a stage's, the top layer."""
STAGE_PACKAGES = ("download", "preprocess", "train", "evaluate", "predict", "plot", "pretrain",
                  "experiments")


def test_every_module_lives_in_a_layer_or_a_stage_package():
    assert {package(m) for m in modules()} == set(LAYERS) | set(STAGE_PACKAGES)
    assert (SOURCE / "harclip" / "__init__.py").exists() is False  # a namespace package


def test_no_import_circles():
    """Tarjan's strongly connected components of the module graph: each of one module."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in imports(node):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while (member := stack.pop()) != node:
                component.add(member)
                on_stack.discard(member)
            on_stack.discard(node)
            if component:
                circles.append(sorted(component | {node}))

    for module in sorted(modules()):
        if module not in index:
            visit(module)
    assert circles == []


def test_a_layer_imports_only_the_layers_below_it_and_no_stage_another():
    upward = [f"{module} -> {target}" for module in modules() for target in imports(module)
              if package(target) != package(module)
              and LAYERS.get(package(module), len(LAYERS)) <= LAYERS.get(package(target),
                                                                         len(LAYERS))]
    assert upward == []


def test_only_entry_points_import_the_command_line_harness():
    """Model and data code import the errors and logging they need, not argparse, signals
    and the DVC watchdog."""
    users = sorted(m for m in modules() if "harclip.runtime.harness" in imports(m))
    assert users and all(m.endswith(".__main__") for m in users), users


def test_the_evaluate_stage_runs_no_training_code():
    assert not any(package(m) == "train" for m in reached("harclip.evaluate.__main__"))


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}
