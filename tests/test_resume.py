"""Resumable training: a run stopped by Ctrl-C and then killed outright, rerun each time,
ends where an uninterrupted run ends, without repeating an epoch in its logs."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from harclip import training
from harclip.cache import load_split
from harclip.config import parse_params
from harclip.distributed import ALONE
from harclip.engine import Trainer
from harclip.feed import CachedSplit
from harclip.models import build_model
from harclip.records import SERIES, read_epochs, series_file
from tests.conftest import repo_params
from tests.dvc_project import BIN, DvcProject, tiny_params

pytestmark = pytest.mark.slow

EPOCHS = 4
CPU = torch.device("cpu")
SAME_TRAJECTORY = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def _params(**train_aclip) -> dict:
    params = repo_params()
    params["train_aclip"].update({"epochs": EPOCHS, "batch_size": 16, "device": "cpu",
                                  **train_aclip})
    return params


def epoch_rows(log_dir: Path) -> list[dict]:
    """A run's epochs, as DVCLive logged them; each series must hold every step once."""
    for name in SERIES:
        with open(series_file(log_dir, name)) as handle:
            steps = [int(row["step"]) for row in csv.DictReader(handle, delimiter="\t")]
        assert steps == list(range(1, len(steps) + 1)), (name, steps)  # no repeat, no gap
    return read_epochs(log_dir)


def saved_epochs(state: Path) -> int:
    if not state.is_file():
        return 0
    return len(torch.load(state, map_location="cpu", weights_only=True)["trainer"]["history"])


class Stage:
    """`python -m harclip.train aclip` in its own folder, as DVC would run it."""

    def __init__(self, root: Path, cache: Path, params: dict) -> None:
        self.root, self.cache = root, cache
        root.mkdir()
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        self.state = root / ".harclip/resume/aclip/state.pt"

    def start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "harclip.train", "aclip", "--cache",
                                 str(self.cache)], cwd=self.root, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def stop_after(self, epochs: int, sig: signal.Signals) -> str:
        """Start the stage, send `sig` once its state holds `epochs` epochs; its stderr."""
        process = self.start()
        while saved_epochs(self.state) < epochs:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
        assert process.returncode == expected[sig], stderr
        return stderr

    def finish(self) -> str:
        process = self.start()
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        return stderr


def test_an_interrupted_run_resumes_and_ends_like_an_uninterrupted_one(small_cache, tmp_path):
    whole = Stage(tmp_path / "whole", small_cache, _params())
    whole.finish()
    stage = Stage(tmp_path / "stopped", small_cache, _params())

    stderr = stage.stop_after(1, signal.SIGINT)
    assert "interrupted; rerun to resume after the last saved epoch" in stderr
    stopped_at = saved_epochs(stage.state)
    assert 1 <= stopped_at < EPOCHS
    assert len(epoch_rows(stage.root / "logs/aclip")) in (stopped_at, stopped_at + 1)

    stage.stop_after(stopped_at + 1, signal.SIGKILL)
    killed_at = saved_epochs(stage.state)
    assert stopped_at < killed_at < EPOCHS
    assert not (stage.root / "models/aclip.pt").exists()  # only a finished run publishes

    stderr = stage.finish()
    assert f"resuming after epoch {killed_at}" in stderr
    resumed_rows = epoch_rows(stage.root / "logs/aclip")
    whole_rows = epoch_rows(whole.root / "logs/aclip")
    assert [int(r["epoch"]) for r in resumed_rows] == list(range(1, EPOCHS + 1))
    for resumed, uninterrupted in zip(resumed_rows, whole_rows, strict=True):
        assert {k: resumed[k] for k in SAME_TRAJECTORY} == \
            {k: uninterrupted[k] for k in SAME_TRAJECTORY}
    log = (stage.root / "logs/aclip/train.log").read_text()
    assert all(log.count(f"aclip epoch {epoch}:") == 1 for epoch in range(1, EPOCHS + 1))
    summaries = [json.loads((s.root / "logs/aclip/metrics.json").read_text())
                 for s in (stage, whole)]  # DVCLive's summary, the stage's metrics
    assert [(m["step"], m["aclip"]["best_epoch"]) for m in summaries] == \
        [(EPOCHS, summaries[1]["aclip"]["best_epoch"])] * 2
    resumed_weights, whole_weights = (
        torch.load(s.root / "models/aclip.pt", weights_only=True)["state_dict"]
        for s in (stage, whole))
    assert all(torch.equal(resumed_weights[k], whole_weights[k]) for k in whole_weights)
    assert not stage.state.parent.exists()  # a finished run leaves nothing to resume


def test_dvc_repro_resumes_an_interrupted_stage_and_retrains_a_changed_one(tmp_path):
    params = tiny_params()
    params["download"]["synthetic"].update(images_per_class=16, image_size=64)
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


def test_state_resumes_only_a_run_with_the_same_params_and_data(small_cache, tmp_path):
    params = parse_params(_params(epochs=1))
    config = params.train_aclip

    model, prompts = build_model(config)
    trainer = Trainer(model, training.build_objective(config, model, prompts),
                      CachedSplit(*load_split(small_cache, "train"), ALONE.device),
                      CachedSplit(*load_split(small_cache, "val"), ALONE.device), None, config)
    state = tmp_path / "state.pt"
    fingerprint = training.run_fingerprint(config, small_cache, CPU)
    training.save_resume_state(state, fingerprint, trainer)

    def resumable(changed, device=CPU) -> bool:
        return training.load_resume_state(
            state, training.run_fingerprint(changed, small_cache, device)) is not None

    assert resumable(config)
    assert resumable(replace(config, nprocs=2, log_every=1))  # the trajectory ignores these
    assert not resumable(replace(config, lr=2e-3))
    assert not resumable(replace(config, aclip=replace(config.aclip, keep_ratio=0.5)))
    assert not resumable(config, torch.device("cuda", 0))  # a CPU run's random streams
    other_data = tmp_path / "cache"
    other_data.mkdir()
    (other_data / "manifest.csv").write_text("split,row,file,label,sha256\n")
    assert training.load_resume_state(state, training.run_fingerprint(config, other_data, CPU)) \
        is None
    state.write_bytes(b"truncated")
    assert not resumable(config)
