"""dvc.yaml's code dependencies follow the imports: each stage depends on the packages its
command can import (at the top or inside a function), as folders, and on no other; so changing
code a stage runs reruns it, and a package it never runs does not. A package missing from a
stage's deps would leave `dvc status` clean over changed code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support import REPO_ROOT
from tests.support.imports import package, reached

COMMANDS = {"check_params": "harclip.config", "download": "harclip.download",
            "preprocess": "harclip.preprocess", "train_clip": "harclip.train",
            "train_sglip": "harclip.train", "train_aclip": "harclip.train",
            "evaluate": "harclip.evaluate", "plot": "harclip.plot"}
"""dvc.yaml's stages and the package each one's command runs (`python -m <package>`)."""


@pytest.mark.parametrize("stage", COMMANDS)
def test_a_stage_depends_on_exactly_the_packages_its_command_reaches(stage):
    deps = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    declared = {Path(dep).name for dep in deps if dep.startswith("src/")}
    assert all(dep.count("/") == 2 for dep in deps if dep.startswith("src/")), deps  # folders
    needed = {package(m) for m in reached(f"{COMMANDS[stage]}.__main__")}
    assert declared == needed, f"{stage}: declare {sorted(needed - declared)}, drop " \
                               f"{sorted(declared - needed)}"


def test_the_import_walk_follows_imports_inside_functions():
    assert {"harclip.train.stage", "harclip.train.engine", "harclip.model.classifier"} <= \
        reached("harclip.train.__main__")  # imported inside main(), after the arguments
