"""Batch augmentation on the training device, from the uint8 cache: no JPEG decoding per step.

A random resized crop and a horizontal flip are one affine warp per sample, applied to the
whole batch by a single `grid_sample`; evaluation uses the deterministic full view, resized.
The training loop draws every image's matrix for an epoch at once, so an image's crop does not
depend on which process or micro-batch shows it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class DeviceAugment:
    """uint8 N×3×S×S batches → normalised float batches at the model's input size."""

    def __init__(self, out_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 scale: tuple[float, float] = (0.35, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> None:
        self.out_size = out_size
        self.scale, self.log_ratio = scale, (math.log(ratio[0]), math.log(ratio[1]))
        self.flip = flip
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def for_eval(cls, preprocessing: dict) -> DeviceAugment:
        """The evaluation view a checkpoint's `image_size`, `mean` and `std` describe."""
        return cls(preprocessing["image_size"], tuple(preprocessing["mean"]),
                   tuple(preprocessing["std"]))

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean.device != images.device:  # once: a copy per call would block the host
            self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
        return (images - self.mean) / self.std

    def crop_params(self, batch: int, generator: torch.Generator,
                    device: torch.device) -> torch.Tensor:
        """Per-sample affine matrices (B×2×3) in normalised coordinates: scale, shift, mirror."""
        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.empty(batch, device=device).uniform_(low, high, generator=generator)

        area = uniform(*self.scale)
        ratio = uniform(*self.log_ratio).exp()
        width = (area * ratio).sqrt().clamp(max=1.0)
        height = (area / ratio).sqrt().clamp(max=1.0)
        centre_x = uniform(-1.0, 1.0) * (1.0 - width)
        centre_y = uniform(-1.0, 1.0) * (1.0 - height)
        mirror = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else 1.0
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0] = width * mirror
        theta[:, 0, 2] = centre_x
        theta[:, 1, 1] = height
        theta[:, 1, 2] = centre_y
        return theta

    def warp(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """Each image cropped, resized and mirrored by its own affine matrix from
        `crop_params`."""
        grid = F.affine_grid(theta, [images.shape[0], 3, self.out_size, self.out_size],
                             align_corners=False)
        warped = F.grid_sample(images.float() / 255.0, grid, mode="bilinear",
                               padding_mode="reflection", align_corners=False)
        return self._normalise(warped)

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """The whole cached view, resized to the model's input size."""
        images = images.float() / 255.0
        if images.shape[-1] != self.out_size:
            images = F.interpolate(images, size=(self.out_size, self.out_size),
                                   mode="bilinear", antialias=True, align_corners=False)
        return self._normalise(images)
