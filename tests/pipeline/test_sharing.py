"""Sharing through a DVC remote, as README's "Sharing with a team" says: one teammate runs the
pipeline and pushes (git to a bare origin, the data, models and metrics to a folder remote);
another clones and pulls, and has the results without retraining: `dvc status` and `dvc
repro` find nothing to run, `dvc metrics diff` and `experiments show` work, and an experiment
pushed with `dvc exp push` comes back with `dvc exp pull`, its outputs too."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dvc_project import BIN, DvcProject
from tests.support.params import tiny_training_params

SHARED_OUTPUTS = ("models/clip.pt", "models/sglip.pt", "models/aclip.pt",
                  "metrics/clip/eval.json", "data/cache/train_images.npy")


def _run(cwd: Path, env: dict, *args: str) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_a_teammate_pulls_the_results_and_experiments_without_retraining(tmp_path):
    alice = DvcProject(tmp_path / "alice", tiny_training_params())
    alice.repro()
    origin, store = tmp_path / "origin.git", tmp_path / "store"
    _run(tmp_path, alice.env, "git", "init", "-q", "--bare", str(origin))
    alice.dvc("remote", "add", "-d", "store", str(store))
    alice.commit("results, and the team's remote")
    alice.run("git", "remote", "add", "origin", str(origin))
    alice.run("git", "push", "-q", "origin", "HEAD:refs/heads/main")
    alice.dvc("push")
    pushed = {path: (alice.root / path).read_bytes() for path in SHARED_OUTPUTS}
    alice.dvc("exp", "run", "-S", "++train_clip.lr=0.002", "--name", "clip-lr")
    alice.dvc("exp", "push", "origin", "clip-lr")

    bob = tmp_path / "bob"
    _run(tmp_path, alice.env, "git", "clone", "-q", "-b", "main", str(origin), str(bob))
    dvc = str(BIN / "dvc")
    _run(bob, alice.env, dvc, "pull")
    assert {path: (bob / path).read_bytes() for path in SHARED_OUTPUTS} == pushed
    assert _run(bob, alice.env, dvc, "status").split() == ["check_params:", "always",
                                                            "changed"]
    ran = re.findall(r"Running stage '([^']+)'", _run(bob, alice.env, dvc, "repro"))
    assert ran == ["check_params"]  # nothing retrained
    assert json.loads(_run(bob, alice.env, dvc, "metrics", "diff", "--json")) == {}

    _run(bob, alice.env, dvc, "exp", "pull", "origin", "clip-lr")
    shown = _run(bob, alice.env, sys.executable, "-m", "harclip.experiments", "show")
    runs = [line for line in shown.splitlines() if line.startswith("| ") and "img/s" in line]
    assert len(runs) == 2 and any("clip-lr" in line for line in runs), shown
    _run(bob, alice.env, dvc, "exp", "apply", "clip-lr")
    assert (bob / "models/clip.pt").read_bytes() == (alice.root / "models/clip.pt").read_bytes()
    assert (bob / "models/clip.pt").read_bytes() != pushed["models/clip.pt"]
    assert (bob / "models/sglip.pt").read_bytes() == pushed["models/sglip.pt"]
