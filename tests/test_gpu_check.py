"""The GPU check's `--small` mode: the same checks as on a GPU, on tiny shapes on the CPU, so
the script cannot rot between the rare runs on a GPU."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_small_runs_every_check_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"),
                             str(tmp_path), "--small", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["name"]: c["passed"] for c in report["checks"]}
    assert all(checks.values()) and len(checks) == 9
    assert "train_clip: resumed after epoch 1" in checks and "predict with clip.pt" in checks
    assert set(report["figures"]) == {"clip", "sglip", "aclip"}
    assert report["figures"]["aclip"]["refresh_s"] > 0  # refreshed in the steady epoch too
    assert all(row["images_per_s"] > 0 for row in report["figures"].values())
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| train_sglip |" in table and "| check | result | detail |" in table
    assert "resuming after epoch 1" in (tmp_path / "gpu_check.log").read_text()
