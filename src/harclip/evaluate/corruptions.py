"""Robustness under shift on any dataset: the held-out split under common corruptions.

ImageNet-C's families (Hendrycks & Dietterich 2019) at severities 1 to 5: noise, blur,
weather, and digital ones (JPEG, contrast, brightness, pixelate), applied by albumentations to
the cached uint8 images. Each (corruption, severity) draws from its own seed, so the three
models are scored on the same corrupted images and a rerun reproduces them. The severities
follow ImageNet-C's tables; those that depend on the image size (blur) are scaled from its
224 px to the cache's side. Images are corrupted a batch at a time: memory does not grow with
the split.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from harclip.config.schema import CorruptionsConfig
from harclip.model.scoring import image_logits
from harclip.model.views import DeviceAugment
from harclip.runtime.log import log

os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations asks PyPI on import otherwise
import albumentations as A  # after the line above
import cv2

IMAGENET_C_SIDE = 224
"""The image side ImageNet-C's size-dependent severities were set for."""


def _scaled(values: tuple[float, ...]) -> Callable[[int, int], float]:
    return lambda severity, side: values[severity - 1] * side / IMAGENET_C_SIDE


def _fixed(values: tuple[float, ...]) -> Callable[[int, int], float]:
    return lambda severity, side: values[severity - 1]


def _kernel(sigma: float) -> int:
    """A fixed odd kernel wide enough for ±3σ (a bare int `blur_limit` would draw the size
    per image, sometimes 1: no blur)."""
    return 2 * math.ceil(3 * sigma) + 1


TRANSFORMS: dict[str, tuple[Callable[[int, int], float], Callable[[float], A.BasicTransform]]]
TRANSFORMS = {
    # noise: Gaussian, std as a share of 255 (ImageNet-C's c)
    "gaussian_noise": (_fixed((0.08, 0.12, 0.18, 0.26, 0.38)),
                       lambda c: A.GaussNoise(std_range=(c, c), p=1.0)),
    # blur: σ in pixels at 224 px, scaled to the cache's side
    "gaussian_blur": (_scaled((1.0, 2.0, 3.0, 4.0, 6.0)),
                      lambda c: A.GaussianBlur(blur_limit=(_kernel(c), _kernel(c)),
                                               sigma_limit=(c, c), p=1.0)),
    # weather: snow, bleaching the pixels whose lightness is under (c × 127.5 + 85) by 2.5
    # (albumentations' fog, drawn circle by circle, costs 100 times as much)
    "snow": (_fixed((0.1, 0.2, 0.3, 0.4, 0.5)),
             lambda c: A.RandomSnow(snow_point_range=(c, c), brightness_coeff=2.5,
                                    method="bleach", p=1.0)),
    # digital: JPEG quality, the share of contrast kept (blended with the mean grey), the
    # brightness added (a share of 255), pixelate's downscale before a nearest upscale
    "jpeg": (_fixed((25, 18, 15, 10, 7)),
             lambda q: A.ImageCompression(quality_range=(int(q), int(q)), p=1.0)),
    "contrast": (_fixed((0.4, 0.3, 0.2, 0.1, 0.05)),
                 lambda c: A.ColorJitter(brightness=(1.0, 1.0), contrast=(c, c),
                                         saturation=(1.0, 1.0), hue=(0.0, 0.0), p=1.0)),
    "brightness": (_fixed((0.1, 0.2, 0.3, 0.4, 0.5)),
                   lambda c: A.RandomBrightnessContrast(brightness_limit=(c, c),
                                                        contrast_limit=(0.0, 0.0), p=1.0)),
    "pixelate": (_fixed((0.6, 0.5, 0.4, 0.3, 0.25)),
                 lambda c: A.Downscale(scale_range=(c, c), p=1.0, interpolation_pair={
                     "downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST})),
}
"""Each corruption: its parameter at a severity and image side, and the transform it makes."""


def corrupter(name: str, severity: int, side: int, seed: int) -> Callable[[np.ndarray],
                                                                          np.ndarray]:
    """A function that corrupts a uint8 batch (N×3×S×S) as `name` at `severity`, drawing
    from a generator seeded by (seed, name, severity): called on the split's batches in
    order, it gives the same images whatever the batch size. Severity 0 is the identity."""
    if severity == 0:
        return np.array  # a writable copy, as the corrupted batches are
    parameter, make = TRANSFORMS[name]
    state = np.random.SeedSequence([seed, zlib.crc32(name.encode()), severity])
    pipeline = A.Compose([make(parameter(severity, side))],
                         seed=int(state.generate_state(1)[0]))

    def corrupt(images: np.ndarray) -> np.ndarray:
        out = np.empty_like(images)
        for i, image in enumerate(images):
            out[i] = pipeline(image=np.ascontiguousarray(image.transpose(1, 2, 0)))[
                "image"].transpose(2, 0, 1)
        return out

    return corrupt


@torch.no_grad()
def corrupted_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                       view: DeviceAugment, batch_size: int, dtype: torch.dtype | None,
                       device: torch.device,
                       corrupt: Callable[[np.ndarray], np.ndarray]) -> float:
    """Accuracy on `images` (a memory-mapped split) corrupted a batch at a time."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(corrupt(np.asarray(images[start:start + batch_size])))
        logits = image_logits(model, batch.to(device), view, dtype)
        correct += int((logits.argmax(1).cpu().numpy() ==
                        labels[start:start + batch_size]).sum())
    return correct / len(images)


def corruption_scores(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                      view: DeviceAugment, config: CorruptionsConfig, batch_size: int,
                      dtype: torch.dtype | None, device: torch.device,
                      name: str) -> dict[str, dict[str, float]]:
    """report.json's `corruptions`: accuracy per corruption and severity ({name: {"1": acc,
    ...}}), one log line per corruption."""
    scores = {}
    for corruption in config.names:
        scores[corruption] = {
            str(severity): round(corrupted_accuracy(
                model, images, labels, view, batch_size, dtype, device,
                corrupter(corruption, severity, images.shape[-1], config.seed)), 6)
            for severity in config.severities}
        log.info("evaluate %s under %s: accuracy %s at severity %s", name, corruption,
                 " ".join(f"{a:.3f}" for a in scores[corruption].values()),
                 " ".join(scores[corruption]))
    return scores
