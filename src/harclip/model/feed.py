"""The training feed: the uint8 cache where the model runs, batches taken from it in an
epoch's order, and the effective batches every process shares equally.

No JPEG is decoded during training: the cache is loaded once, onto the GPU when it fits (else
into host memory, each batch pinned and copied asynchronously), and a batch is an index into
it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    """One micro-batch on the device: augmented images, labels, their rows in the split, each
    crop's affine matrix (for methods that warp per-image data the same way) and, for an
    objective that asks for it, the whole uncropped view of each image."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None = None
    crop: torch.Tensor | None = None
    whole: torch.Tensor | None = None


class CachedSplit:
    """A split of the uint8 cache: on the GPU when it fits in `device_fraction` of the free
    memory, else in host memory with each batch pinned and copied asynchronously."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 device_fraction: float = 0.5) -> None:
        array = torch.from_numpy(np.array(images))  # reads a memory-mapped cache into RAM
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.device = device
        fits = device.type == "cuda" and \
            array.numel() < device_fraction * torch.cuda.mem_get_info(device)[0]
        self.images = array.to(device) if fits else array
        self.resident = fits or device.type != "cuda"
        """Whether batches are indexed where the images are (the GPU, or a CPU run's RAM),
        rather than gathered on the host and uploaded."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def host_index(self, order: torch.Tensor) -> torch.Tensor:
        """`order` ready for `batches`: in pinned memory on a GPU, so that each batch's
        indices go up without blocking the host."""
        return order.pin_memory() if self.device.type == "cuda" else order

    def batches(self, order: torch.Tensor, size: int,
                with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """(uint8 images, labels[, rows]) on the device, in `order` (a CPU index tensor; pass
        it through `host_index` first where no host sync is wanted)."""
        for start in range(0, len(order), size):
            index = order[start:start + size]
            on_device = index.to(self.device, non_blocking=True)
            if self.resident:
                images = self.images[on_device]
            else:  # indexing copies the batch; pinning that copy makes the upload async
                images = self.images[index].pin_memory().to(self.device, non_blocking=True)
            yield (images, self.labels[on_device], on_device) if with_index else \
                (images, self.labels[on_device])


def padded(images: torch.Tensor, size: int) -> torch.Tensor:
    """A short batch brought to `size` rows with copies of its first, so a compiled function
    sees one shape; the caller keeps the first len(images) rows of what it computes."""
    if len(images) >= size:
        return images
    return torch.cat([images, images[:1].expand(size - len(images), *images.shape[1:])])


def resident_cache_bytes(*splits: CachedSplit) -> int:
    """Bytes of the image cache held where the run's peak memory is measured (the GPU's
    memory, or a CPU run's resident set)."""
    return sum(split.nbytes for split in splits if split.resident)


def effective_batches(order: torch.Tensor, batch_size: int, world_size: int,
                      drop_last: bool = False) -> Iterator[torch.Tensor]:
    """The epoch's effective batches; the last is cut to a multiple of world_size (dropped
    if smaller), or dropped whenever short with `drop_last`, so every process gets an equal
    share of every step."""
    for start in range(0, len(order), batch_size):
        group = order[start:start + batch_size]
        usable = len(group) - len(group) % world_size
        if usable and not (drop_last and len(group) < batch_size):
            yield group[:usable]


def steps_per_epoch(images: int, batch_size: int, world_size: int,
                    drop_last: bool = False) -> int:
    return sum(1 for _ in effective_batches(torch.arange(images), batch_size, world_size,
                                            drop_last))
