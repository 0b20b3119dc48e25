"""Checkpoints: saved atomically with everything needed to use them, read back as data only,
and any other file a one-line error."""

from __future__ import annotations

import pytest
import torch

from harclip.data.layout import CLASS_NAMES
from harclip.model.checkpoints import load_checkpoint, save_checkpoint
from harclip.model.classifier import build_model
from harclip.runtime.errors import StageError
from tests.support.params import train_config
from tests.support.runs import random_batch


def test_checkpoint_round_trip_and_clear_errors_for_other_files(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model(train_config(model="harclip-tiny-siglip"))
    path = tmp_path / "sglip.pt"
    save_checkpoint(path, model, "harclip-tiny-siglip", CLASS_NAMES, {"epoch": 3})
    loaded, meta = load_checkpoint(path)
    images, _ = random_batch(n=2)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(images), loaded(images), atol=1e-6)
    assert meta["class_names"] == list(CLASS_NAMES) and meta["epoch"] == 3
    assert meta["image_size"] == 64 and len(meta["mean"]) == 3

    payload = torch.load(path, weights_only=True)
    payload["version"] = 0
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(StageError, match="old.pt: checkpoint format version 0"):
        load_checkpoint(tmp_path / "old.pt")
    payload["version"] = 1
    payload["model_config"] = {**payload["model_config"], "embed_dim": 64}
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(StageError, match="other.pt: saved for a harclip-tiny-siglip whose "
                                         "architecture differs"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(StageError, match="foreign.pt: not a harclip checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(StageError, match="junk.pt: not a readable harclip checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
