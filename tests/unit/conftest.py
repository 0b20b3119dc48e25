"""Fixtures of the unit tests: a pretrained tag whose download is a local file."""

from __future__ import annotations

import open_clip
import pytest
import torch

from harclip.model.backbones import create_backbone

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


@pytest.fixture
def fake_tag(tmp_path, monkeypatch):
    """A pretrained tag `webli` for harclip-tiny-siglip with SigLIP's normalisation, whose
    'download' is a weights file saved here: open_clip's own tag path, offline."""
    torch.manual_seed(3)
    weights = tmp_path / "webli.pt"
    torch.save(create_backbone("harclip-tiny-siglip", None).state_dict(), weights)
    tags = {"webli": {"url": "https://example.invalid/webli.pt", "hf_hub": "",
                      "mean": SIGLIP_MEAN, "std": SIGLIP_STD}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "harclip-tiny-siglip", tags)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: str(weights))
    return weights
