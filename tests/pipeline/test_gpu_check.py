"""The GPU check's `--small` mode: the same checks as on a GPU, on tiny shapes on the CPU, so
the script cannot rot between the rare runs on a GPU; and a report that survives a budget
spent, a stage that hangs and SIGTERM."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_small_runs_every_check_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--small",
                             "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = {c["name"]: c["passed"] for c in report["checks"]}
    assert all(checks.values()) and len(checks) == 11
    assert "train_clip with LoRA, EMA, layer decay and checkpointing" in checks
    assert "train_clip: resumed after epoch 1" in checks and "predict with clip.pt" in checks
    # DistributedDataParallel built over a group of one, whatever the machine
    assert "train_clip under DistributedDataParallel, 1 process (gloo)" in checks
    assert set(report["figures"]) == {"clip", "sglip", "aclip"}
    assert report["figures"]["aclip"]["refresh_s"] > 0  # refreshed in the steady epoch too
    assert all(row["images_per_s"] > 0 and row["val_s"] > 0
               for row in report["figures"].values())
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| train_sglip |" in table and "| check | result | detail |" in table
    assert "resuming after epoch 1" in (tmp_path / "gpu_check.log").read_text()


def test_a_spent_budget_starts_no_phase_and_still_writes_a_valid_report(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--small",
                             "--device", "cpu", "--budget-s", "0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["checks"] and all(c["detail"] == "not run: the time budget was spent"
                                    for c in report["checks"])
    assert "| check | result | detail |" in (tmp_path / "gpu_check.md").read_text()


def test_a_stage_past_the_time_left_is_killed_and_reported(tmp_path):
    """Killed with every process it started, those in sessions of their own too (torchrun's
    workers)."""
    module = _gpu_check()
    ws = module.Workspace(tmp_path, tmp_path / "log", deadline=time.perf_counter() + 60)
    report = module.Report(tmp_path, {"hardware": "h", "torch": "t", "train_images": 1,
                                      "val_images": 1, "image_size": 8})
    (tmp_path / "spawner.py").write_text(
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],\n"
        "                 start_new_session=True)\n"
        "time.sleep(600)\n")
    started = []

    def hangs():  # starts within the budget, then would run for ever, as would its worker
        ws.deadline = time.perf_counter() + 3
        started.append(ws.start("spawner"))
        while not module.descendants(started[0].pid):
            time.sleep(0.1)
        started.extend(module.descendants(started[0].pid))
        ws.wait(started[0])

    module.run_phases([("hangs", hangs)], ws, report)
    check, = report.checks
    assert check.name == "hangs" and not check.passed and "killed after" in check.detail
    stage, worker = started
    assert stage.poll() is not None
    time.sleep(0.5)
    assert not Path(f"/proc/{worker}").exists() or \
        Path(f"/proc/{worker}/stat").read_text().split(")")[1].split()[0] == "Z"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["checks"][0]["name"] == "hangs"


@pytest.mark.slow
def test_sigterm_writes_the_report_of_the_phases_done(tmp_path):
    process = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), "--small",
                                "--device", "cpu"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "gpu_check.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)  # written after the first phase (the cache)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    checks = json.loads((tmp_path / "gpu_check.json").read_text())["checks"]
    assert checks[-1]["name"] == "the whole check" and "SIGTERM" in checks[-1]["detail"]
