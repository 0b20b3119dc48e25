"""Backbones: pretrained weights from a local file reproduce the model's outputs, and a tag or
file that cannot be had says what to do offline."""

from __future__ import annotations

import pytest
import torch

from harclip.model.backbones import create_backbone
from harclip.runtime.errors import StageError
from tests.support.runs import random_batch


def test_pretrained_from_a_local_checkpoint_file_reproduces_the_outputs(tmp_path):
    torch.manual_seed(1)
    source = create_backbone("harclip-tiny-clip", None)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = create_backbone("harclip-tiny-clip", str(path))
    images, _ = random_batch(n=2)
    source.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(source.encode_image(images), loaded.encode_image(images))


def test_unreachable_pretrained_tag_and_missing_file_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(StageError, match="could not fetch pretrained weights 'openai'.*local"):
        create_backbone("ViT-B-32-quickgelu", "openai")
    with pytest.raises(StageError, match="nope.pt: pretrained checkpoint file not found"):
        create_backbone("harclip-tiny-clip", str(tmp_path / "nope.pt"))
    with pytest.raises(StageError, match="unknown model 'ViT-Q-99'"):
        create_backbone("ViT-Q-99", None)
