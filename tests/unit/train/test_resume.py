"""Resumable training's state: it holds what the next epoch needs (not the frozen text tower),
loads onto the CPU, is saved every `resume_every` epochs, keeps the best checkpoint of the
epochs it restored, and resumes only a run of the same params and data. Runs stopped by
signals are tests/pipeline/test_resume.py's."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harclip.config.params import parse_params
from harclip.data.cache import load_split
from harclip.data.records import read_epochs
from harclip.model.classifier import build_model
from harclip.model.feed import CachedSplit
from harclip.model.storage import save_atomically
from harclip.runtime.distributed import ALONE
from harclip.train import resume
from harclip.train import stage as train_stage
from harclip.train.engine import Trainer
from tests.support import REPO_ROOT
from tests.support.params import aclip_config, train_config
from tests.support.runs import (
    aclip_stage_params,
    make_trainer,
)

CPU = torch.device("cpu")


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


CPU = torch.device("cpu")


def test_the_resume_state_leaves_the_frozen_text_tower_out(tmp_path):
    config = train_config(epochs=2, batch_size=8, head_init="text", contrastive_weight=0.0)
    torch.manual_seed(0)
    trainer = make_trainer(config, n_train=16)
    trainer.fit(lambda record: None)
    state = trainer.state_dict()
    assert trainer.frozen and not set(state["model"]) & trainer.frozen
    assert all(key.startswith(("clip.visual.", "head.")) for key in state["model"])
    torch.manual_seed(1)  # another init: the frozen weights come from `pretrained` (none here)
    fresh = make_trainer(config, n_train=16)
    fresh.load_state_dict(state)
    trained = dict(trainer.model.named_parameters())
    for name, param in fresh.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, trained[name]), name


def test_the_resume_state_is_saved_every_resume_every_epochs_but_the_last(
        small_cache, tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(train_stage, "save_resume_state",
                        lambda path, fingerprint, trainer: saved.append(len(trainer.history)))
    summary = train_stage.run("clip", train_config(epochs=5, batch_size=64, resume_every=2,
                                                   device="cpu"), small_cache,
                              tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    assert saved == [2, 4]

    rows = read_epochs(tmp_path / "logs" / "clip")
    assert all(row["save_time_s"] > 0 for row in rows)  # the checkpoint, the state: timed
    assert summary["mean_save_time_s"] > 0


def test_a_resumed_run_keeps_the_best_checkpoint_of_the_epochs_it_restored(
        small_cache, tmp_path, monkeypatch):
    """With resume_every 2, a run stopped in epoch 3 resumes after epoch 2; the best.pt a
    later epoch of the stopped run wrote is not this run's: the one saved with the state is."""
    config = train_config(epochs=3, batch_size=64, resume_every=2, device="cpu")
    folders = (tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    original = train_stage.Trainer._epoch

    def stop_in_epoch_3(self, epoch, describe):
        if epoch == 3:  # as if epoch 3 had saved a best.pt, the way the stage saves one
            best = tmp_path / "resume" / "clip" / "best.pt"
            payload = torch.load(best, weights_only=True)
            save_atomically({**payload, "epoch": 3, "val_acc": 0.99}, best)
            raise KeyboardInterrupt
        return original(self, epoch, describe)

    monkeypatch.setattr(train_stage.Trainer, "_epoch", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_stage.run("clip", config, small_cache, *folders)
    monkeypatch.setattr(train_stage.Trainer, "_epoch", original)
    summary = train_stage.run("clip", config, small_cache, *folders)
    saved = torch.load(tmp_path / "models" / "clip.pt", weights_only=True)
    assert summary["best_val_acc"] < 0.99 and saved["val_acc"] == summary["best_val_acc"]
    assert saved["epoch"] == summary["best_epoch"]


def test_resume_state_loads_onto_the_cpu_whatever_the_device(tmp_path):
    """Generator states must be CPU byte tensors (a state mapped onto a GPU fails in
    set_state); the A-CLIP teacher's cached map follows the teacher's device."""
    config = train_config("aclip", epochs=2, batch_size=8,
                          aclip=aclip_config(saliency="cached", keep_ratio=0.5))
    torch.manual_seed(0)
    trainer = make_trainer(config)
    trainer.fit()
    path = tmp_path / "state.pt"
    resume.save_resume_state(path, "f", trainer)
    state = resume.load_resume_state(path, "f")
    tensors = [v for v in _leaves(state) if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert state["rng"]["shuffle"].dtype == torch.uint8
    torch.manual_seed(1)
    fresh = make_trainer(config)
    fresh.load_state_dict(state)
    assert fresh.objective.cached.device == next(fresh.objective.teacher.parameters()).device
    assert torch.equal(fresh.shuffle.get_state(), trainer.shuffle.get_state())


@pytest.mark.slow
def test_state_resumes_only_a_run_with_the_same_params_and_data(small_cache, tmp_path):
    params = parse_params(aclip_stage_params(epochs=1), REPO_ROOT / "params.yaml")
    config = params.train_aclip

    model, prompts = build_model(config)
    trainer = Trainer(model, train_stage.build_objective(config, model, prompts),
                      CachedSplit(*load_split(small_cache, "train"), ALONE.device),
                      CachedSplit(*load_split(small_cache, "val"), ALONE.device), None, config)
    state = tmp_path / "state.pt"
    fingerprint = resume.run_fingerprint(config, small_cache, CPU)
    resume.save_resume_state(state, fingerprint, trainer)

    def resumable(changed, device=CPU) -> bool:
        return resume.load_resume_state(
            state, resume.run_fingerprint(changed, small_cache, device)) is not None

    assert resumable(config)
    assert resumable(replace(config, nprocs=2, log_every=1))  # the trajectory ignores these
    assert not resumable(replace(config, lr=2e-3))
    assert not resumable(replace(config, aclip=replace(config.aclip, keep_ratio=0.5)))
    assert not resumable(config, torch.device("cuda", 0))  # a CPU run's random streams
    other_data = tmp_path / "cache"
    other_data.mkdir()
    (other_data / "manifest.csv").write_text("split,row,file,label,sha256\n")
    assert resume.load_resume_state(state, resume.run_fingerprint(config, other_data, CPU)) \
        is None
    state.write_bytes(b"truncated")
    assert not resumable(config)
