"""The training stage's run: the study's columns every epoch, the steady-state time apart from
warm-up, the best of the weights and their EMA kept, a pretrained tag's normalisation carried
into the checkpoint, and no step or model selection reading the test split."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from harclip.data.cache import load_split
from harclip.data.layout import CLASS_NAMES
from harclip.data.records import read_epochs
from harclip.model.backbones import (
    create_backbone,
    image_normalisation,
    preprocessing_of,
    tag_normalisation,
)
from harclip.model.calibration import fit_temperature
from harclip.model.checkpoints import load_checkpoint, save_checkpoint
from harclip.model.classifier import build_model
from harclip.model.feed import CachedSplit
from harclip.model.scoring import split_logits
from harclip.model.views import DeviceAugment
from harclip.train import stage as train_stage
from harclip.train.engine import Trainer
from tests.support.params import train_config

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


CPU = torch.device("cpu")


def test_the_best_of_the_weights_and_their_ema_is_kept_and_said(small_cache, tmp_path):
    config = train_config(epochs=3, batch_size=64, ema_decay=0.6, device="cpu")
    summary = train_stage.run("clip", config, small_cache, tmp_path / "models",
                              tmp_path / "logs", tmp_path / "resume")
    rows = read_epochs(tmp_path / "logs" / "clip")
    scores = [(row[key], row["epoch"], weights) for row in rows
              for weights, key in (("raw", "val_acc"), ("ema", "ema_val_acc"))]
    best = max(scores, key=lambda item: item[0])
    _, meta = load_checkpoint(tmp_path / "models" / "clip.pt")
    assert meta["val_acc"] == pytest.approx(best[0], abs=1e-6)  # the logs keep 6 decimals
    assert (meta["epoch"], meta["weights"]) == best[1:]
    assert summary["best_weights"] == meta["weights"]


def test_a_pretrained_tag_brings_its_normalisation_into_training_and_the_checkpoint(
        fake_tag, tmp_path):
    config = train_config(model="harclip-tiny-siglip", pretrained="webli")
    model, _ = build_model(config)
    assert preprocessing_of(model.clip)["mean"] == list(SIGLIP_MEAN)
    save_checkpoint(tmp_path / "m.pt", model, config.model, CLASS_NAMES, {})
    _, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["mean"] == list(SIGLIP_MEAN) and meta["std"] == list(SIGLIP_STD)
    # a local weights file takes what every tag of its architecture shares
    assert tag_normalisation("harclip-tiny-siglip") == {"mean": SIGLIP_MEAN, "std": SIGLIP_STD}
    from_file = create_backbone("harclip-tiny-siglip", str(fake_tag))
    assert tuple(from_file.visual.preprocess_cfg["mean"]) == SIGLIP_MEAN
    assert tag_normalisation("ViT-B-16-SigLIP") == {"mean": SIGLIP_MEAN, "std": SIGLIP_STD}


def test_steady_state_time_leaves_the_first_epoch_of_each_process_out():
    """The run's first epoch and a resumed run's first (epoch 3 here) compile again."""
    records = [types.SimpleNamespace(epoch_time_s=t, refresh_time_s=r, images_per_s=100 / t,
                                     peak_memory_mb=m, warm_up=w)
               for t, r, m, w in ((30.0, 1.0, 5.0, True), (2.0, 0.5, 7.0, False),
                                  (25.0, 0.5, 6.0, True), (4.0, 0.0, 6.0, False))]
    summary = train_stage.timing_summary(records)
    assert summary["mean_epoch_time_s"] == 3.0 and summary["first_epoch_time_s"] == 30.0
    assert summary["mean_refresh_time_s"] == 0.25 and summary["peak_memory_mb"] == 7.0
    assert summary["mean_images_per_s"] == pytest.approx((50 + 25) / 2)
    assert json.dumps(summary)


def test_each_process_marks_its_first_epoch_as_warm_up(small_cache):
    config = train_config(epochs=3, batch_size=64, device="cpu")
    model, prompts = build_model(config)
    images, labels = load_split(small_cache, "train")
    split = CachedSplit(images[:64], labels[:64], CPU)
    augment = DeviceAugment(64, *image_normalisation(model.clip))
    trainer = Trainer(model, train_stage.build_objective(config, model, prompts), split, split,
                      augment, config)

    def stop_after_epoch_2(record):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(stop_after_epoch_2)
    state = trainer.state_dict()
    resumed = Trainer(model, train_stage.build_objective(config, model, prompts), split, split,
                      augment, config)
    resumed.load_state_dict(state)
    assert [r.warm_up for r in resumed.fit()] == [True, False, True]


def test_no_training_step_or_model_selection_reads_the_test_split(small_cache, tmp_path,
                                                                  monkeypatch):
    from harclip.train import stage as train_stage

    read = []
    original = train_stage.load_split
    monkeypatch.setattr(train_stage, "load_split",
                        lambda cache, split: read.append(split) or original(cache, split))
    assert len(original(small_cache, "test")[1]) > 0  # there is a test split to leak
    train_stage.run("clip", train_config(epochs=1, batch_size=32, device="cpu"), small_cache,
                    tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    assert sorted(read) == ["train", "val"]


def test_the_published_checkpoint_carries_the_temperature_fitted_on_val(small_cache, tmp_path):
    """The temperature is fitted with the weights the checkpoint holds, scored on val as
    evaluate and predict score them, so predict needs nothing but the checkpoint."""
    config = train_config(epochs=2, batch_size=64, device="cpu")
    summary = train_stage.run("clip", config, small_cache, tmp_path / "models",
                              tmp_path / "logs", tmp_path / "resume")
    model, meta = load_checkpoint(tmp_path / "models" / "clip.pt")
    val = CachedSplit(*load_split(small_cache, "val"), CPU)
    logits = split_logits(model, val, DeviceAugment.for_eval(meta), 64, None)
    assert meta["temperature"] == pytest.approx(fit_temperature(logits, val.labels), rel=1e-4)
    assert summary["temperature"] == meta["temperature"] != 1.0
    assert meta["epoch"] == summary["best_epoch"] and meta["val_acc"] == summary["best_val_acc"]


def test_a_one_shot_run_of_15_images_trains_with_its_batch_capped(small_cache, tmp_path,
                                                                   caplog):
    """shots_per_class 1: one image of each of the 15 classes, a batch of 32 capped to the 15;
    val is the whole split."""
    config = train_config(shots_per_class=1, epochs=2, batch_size=32, device="cpu")
    with caplog.at_level("INFO", logger="harclip"):
        summary = train_stage.run("clip", config, small_cache, tmp_path / "models",
                                  tmp_path / "logs", tmp_path / "resume")
    said = [r.getMessage() for r in caplog.records]
    train_labels = load_split(small_cache, "train")[1]
    assert f"clip: 1 shot(s) per class: 15 of the {len(train_labels)} training images " \
           f"(drawn with seed 0)" in said
    assert "clip: batch_size 32 capped to 15, the 15 training images" in said
    val = len(load_split(small_cache, "val")[1])
    assert any(f"15 train / {val} val images" in line for line in said)
    _, meta = load_checkpoint(tmp_path / "models" / "clip.pt")
    assert meta["params"]["shots_per_class"] == 1 and meta["params"]["batch_size"] == 15
    epochs = read_epochs(tmp_path / "logs" / "clip")
    assert [e["epoch"] for e in epochs] == [1, 2] and summary["best_val_acc"] > 0


def test_the_shots_are_part_of_what_a_resumed_run_must_share(small_cache):
    from harclip.train.resume import run_fingerprint

    prints = {run_fingerprint(train_config(shots_per_class=k), small_cache, CPU)
              for k in (None, 1, 2)}
    assert len(prints) == 3


@pytest.mark.parametrize(("nprocs", "micro", "batch", "micro_after"), [
    (1, None, 15, None),  # one process: every image in one step
    (2, None, 14, None),  # 15 images over 2 processes: 7 each
    (2, 5, 14, 1),  # 7 a process: the largest micro-batch ≤ 5 dividing it
    (4, 5, 12, 3),  # 3 a process
    (3, 5, 15, 5),  # 5 a process: the micro-batch asked still fits
])
def test_a_capped_batch_suits_the_processes_and_keeps_the_micro_batch_bound(
        nprocs, micro, batch, micro_after):
    """15 images of 15 classes against a batch of 60: the batch splits evenly over the
    processes, and no forward pass takes more images than micro_batch_size allowed."""
    from harclip.runtime.distributed import World

    labels = np.repeat(np.arange(15), 4)
    images = np.zeros((60, 3, 4, 4), dtype=np.uint8)
    config = train_config(shots_per_class=1, batch_size=60, nprocs=nprocs,
                          micro_batch_size=micro)
    kept, kept_labels, capped = train_stage.few_shot(
        "clip", config, World(size=nprocs, local_size=nprocs), images, labels,
        list(CLASS_NAMES))
    assert len(kept) == len(kept_labels) == 15 and sorted(kept_labels) == list(range(15))
    assert (capped.batch_size, capped.micro_batch_size) == (batch, micro_after)


def test_fewer_shots_than_processes_is_one_line_naming_the_key():
    from harclip.runtime.distributed import World
    from harclip.runtime.errors import StageError

    labels = np.array([0, 0, 1, 1])
    config = train_config(shots_per_class=1, batch_size=4, nprocs=4)
    with pytest.raises(StageError, match=r"train_clip.shots_per_class 1 gives 2 training "
                                         r"images, fewer than the 4 processes"):
        train_stage.few_shot("clip", config, World(size=4, local_size=4),
                             np.zeros((4, 3, 4, 4), np.uint8), labels, ["a", "b"])
