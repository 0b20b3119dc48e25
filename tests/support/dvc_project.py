"""A real DVC project in a temporary git repo: the repo's dvc.yaml and src/ with tiny params."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support import REPO_ROOT

BIN = Path(sys.executable).parent


class DvcProject:
    """The repo's pipeline (dvc.yaml, src/, the shipped pretrained starts) with given params."""

    def __init__(self, root: Path, params: dict) -> None:
        self.root = root
        shutil.copytree(REPO_ROOT / "src", root / "src",
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        for name in ("dvc.yaml", ".gitignore", ".dvcignore"):  # as the repository has them
            shutil.copy(REPO_ROOT / name, root / name)
        shutil.copytree(REPO_ROOT / "models" / "pretrained", root / "models" / "pretrained")
        self.write_params(params)
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                    "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
        self.run("git", "init", "-q")
        self.run("dvc", "init", "-q")
        self.run("dvc", "config", "core.analytics", "false")
        self.run("dvc", "config", "core.check_update", "false")
        self.commit("init")

    def run(self, *args: str) -> str:
        result = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result.stdout + result.stderr

    def dvc(self, *args: str) -> str:
        return self.run(str(BIN / "dvc"), *args)

    @property
    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def set_param(self, dotted: str, value) -> None:
        params = self.params
        *path, key = dotted.split(".")
        section = params
        for part in path:
            section = section[part]
        section[key] = value
        self.write_params(params)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "--allow-empty", "-m", message)

    def repro(self, *targets: str) -> list[str]:
        """Run `dvc repro`; return the stages that actually ran, in order, but check_params,
        which runs every time."""
        output = self.dvc("repro", *targets)
        return [name for name in re.findall(r"Running stage '([^']+)'", output)
                if name != "check_params"]

    def up_to_date(self, *targets: str) -> bool:
        """`dvc status` (with targets: those and what they depend on) finds nothing to rerun
        but check_params, which is always changed: it runs on every repro."""
        said = self.dvc("status", *(("--with-deps", *targets) if targets else ()))
        return said.split() in (["Data", "and", "pipelines", "are", "up", "to", "date."],
                                ["check_params:", "always", "changed"])

    def changed_stages(self, *targets: str) -> set[str]:
        """Stages `dvc status` names as changed (only those whose own inputs changed); with
        targets, those and the stages they depend on."""
        options = ("--with-deps", *targets) if targets else ()
        return set(json.loads(self.dvc("status", "--json", *options) or "{}")) - \
            {"check_params"}

