"""The device-side views of the uint8 cache: random resized crops and flips per sample,
deterministic under a seed, and the evaluation view of the whole image."""

from __future__ import annotations

import torch

from harclip.model.views import DeviceAugment


def _augment(**kwargs):
    return DeviceAugment(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), **kwargs)


def _train_view(augment, images, seed):
    theta = augment.crop_params(len(images), torch.Generator().manual_seed(seed), images.device)
    return augment.warp(images, theta), theta


def test_augmentation_crops_differ_per_sample_and_stay_in_range():
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).repeat(6, 1, 1, 1)
    out, _ = _train_view(_augment(), images, 0)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= (0 - 0.5) / 0.25 - 1e-5 and out.max() <= (1 - 0.5) / 0.25 + 1e-5
    assert len({tuple(sample.flatten()[:20].tolist()) for sample in out}) == 6


def test_augmentation_is_deterministic_under_a_seed():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    first, _ = _train_view(_augment(), images, 3)
    again, _ = _train_view(_augment(), images, 3)
    other, _ = _train_view(_augment(), images, 4)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_flip_really_mirrors_and_a_full_crop_is_the_image_itself():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    full = _augment(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out, theta = _train_view(full, images, 0)
    mirrored = theta[:, 0, 0] < 0
    assert 0 < mirrored.sum() < 32
    plain = full.eval(images)
    assert torch.allclose(out[~mirrored], plain[~mirrored], atol=1e-5)
    assert torch.allclose(out[mirrored], plain[mirrored].flip(-1), atol=1e-5)


def test_eval_view_resizes_the_whole_image():
    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out = _augment().eval(images)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, (1 - 0.5) / 0.25))
