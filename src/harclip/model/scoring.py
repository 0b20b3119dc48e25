"""Class logits on the deterministic view, all tokens: what validation during training, the
evaluate stage and predict compute, one function for all three; and the probabilities predict
reports, calibrated by the checkpoint's temperature."""

from __future__ import annotations

import torch
from torch import nn

from harclip.model.feed import CachedSplit
from harclip.model.views import DeviceAugment
from harclip.runtime.devices import autocast


def image_logits(model: nn.Module, images: torch.Tensor, view: DeviceAugment,
                 dtype: torch.dtype | None) -> torch.Tensor:
    """Float32 class logits of a uint8 batch (N×3×S×S, on the model's device), each image
    resized whole to the model's input and normalised as `view` says."""
    with autocast(images.device, dtype):
        return model(view.eval(images)).float()


def probabilities(model: nn.Module, images: torch.Tensor, view: DeviceAugment,
                  dtype: torch.dtype | None, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / temperature) of a uint8 batch (see `harclip.model.calibration`)."""
    return (image_logits(model, images, view, dtype) / temperature).softmax(dim=1)


@torch.no_grad()
def split_logits(model: nn.Module, split: CachedSplit, view: DeviceAugment, batch_size: int,
                 dtype: torch.dtype | None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Class logits (float32, on the device) for a split, or for its `rows`."""
    model.eval()
    rows = torch.arange(len(split)) if rows is None else rows
    return torch.cat([image_logits(model, images, view, dtype)
                      for images, _ in split.batches(rows, batch_size)])
