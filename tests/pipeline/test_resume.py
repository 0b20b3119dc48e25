"""Resumable training, with real processes and signals: a stage stopped by Ctrl-C and then
killed outright, rerun each time, ends where an uninterrupted run ends without repeating an
epoch in its logs; and `dvc repro` after an interruption resumes the stage, while a stage whose
params changed meanwhile trains afresh."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from tests.support.dvc_project import BIN, DvcProject
from tests.support.params import tiny_params
from tests.support.runs import RESUME_EPOCHS, Stage, aclip_stage_params, epoch_rows, saved_epochs

pytestmark = pytest.mark.slow


EPOCHS = 4
SAME_TRAJECTORY = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def test_dvc_repro_resumes_an_interrupted_stage_and_retrains_a_changed_one(tmp_path):
    params = tiny_params()
    params["download"]["synthetic"].update(images_per_class=16, shifted_images_per_class=0,
                                           image_size=64)
    params["preprocess"]["image_size"] = 64
    params["train_clip"].update(epochs=EPOCHS, batch_size=16, device="cpu")
    project = DvcProject(tmp_path, params)
    project.repro("preprocess")
    state = tmp_path / ".harclip/resume/clip/state.pt"

    # Ctrl-C in a terminal: SIGINT to dvc and to the stage it runs.
    dvc = subprocess.Popen([str(BIN / "dvc"), "repro", "train_clip"],
                           cwd=tmp_path, env=project.env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while saved_epochs(state) < 1:
        assert dvc.poll() is None, dvc.stdout.read()
        time.sleep(0.05)
    os.killpg(dvc.pid, signal.SIGINT)
    dvc.communicate(timeout=120)
    assert dvc.returncode != 0
    stopped_at = saved_epochs(state)
    assert 1 <= stopped_at < EPOCHS

    output = project.dvc("repro", "train_clip")  # DVC deletes the outputs, then reruns
    assert f"resuming after epoch {stopped_at}" in output
    rows = epoch_rows(tmp_path / "logs/clip")
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
    assert not state.parent.exists()
    assert project.changed_stages("train_clip") == set()

    project.set_param("train_clip.lr", 2e-3)  # a finished stage whose params changed
    output = project.dvc("repro", "train_clip")
    assert "Running stage 'train_clip'" in output and "resuming" not in output
    assert len(epoch_rows(tmp_path / "logs/clip")) == EPOCHS


def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(small_cache, tmp_path):
    whole = Stage(tmp_path / "whole", small_cache, aclip_stage_params())
    whole.finish()
    stage = Stage(tmp_path / "stopped", small_cache, aclip_stage_params())

    stderr = stage.stop_after(1, signal.SIGINT)
    stops = [line for line in stderr.splitlines() if "interrupted" in line or "rerun" in line]
    assert len(stops) == 1 and stops[0].endswith(
        "interrupted; aclip: rerun to resume after the last saved epoch (every resume_every = "
        "1; state in .harclip/resume/aclip)"), stderr
    stopped_at = saved_epochs(stage.state)
    assert 1 <= stopped_at < RESUME_EPOCHS
    assert len(epoch_rows(stage.root / "logs/aclip")) in (stopped_at, stopped_at + 1)

    stage.stop_after(stopped_at + 1, signal.SIGKILL)
    killed_at = saved_epochs(stage.state)
    assert stopped_at < killed_at < RESUME_EPOCHS
    assert not (stage.root / "models/aclip.pt").exists()  # only a finished run publishes

    stderr = stage.finish()
    assert f"resuming after epoch {killed_at}" in stderr
    resumed_rows = epoch_rows(stage.root / "logs/aclip")
    whole_rows = epoch_rows(whole.root / "logs/aclip")
    assert [int(r["epoch"]) for r in resumed_rows] == list(range(1, RESUME_EPOCHS + 1))
    for resumed, uninterrupted in zip(resumed_rows, whole_rows, strict=True):
        assert {k: resumed[k] for k in SAME_TRAJECTORY} == \
            {k: uninterrupted[k] for k in SAME_TRAJECTORY}
    log = (stage.root / "logs/aclip/train.log").read_text()
    assert all(log.count(f"aclip epoch {epoch}:") == 1 for epoch in range(1, RESUME_EPOCHS + 1))
    summaries = [json.loads((s.root / "logs/aclip/metrics.json").read_text())
                 for s in (stage, whole)]  # DVCLive's summary, the stage's metrics
    assert [(m["step"], m["aclip"]["best_epoch"]) for m in summaries] == \
        [(RESUME_EPOCHS, summaries[1]["aclip"]["best_epoch"])] * 2
    resumed_weights, whole_weights = (
        torch.load(s.root / "models/aclip.pt", weights_only=True)["state_dict"]
        for s in (stage, whole))
    assert all(torch.equal(resumed_weights[k], whole_weights[k]) for k in whole_weights)
    assert not stage.state.parent.exists()  # a finished run leaves nothing to resume
