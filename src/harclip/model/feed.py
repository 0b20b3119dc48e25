"""The training feed: the uint8 cache where the model runs, batches taken from it in an
epoch's order, and the effective batches every process shares equally.

No JPEG is decoded during training. A split's images are loaded once onto the GPU when they
fit, else into host memory (each batch pinned and copied asynchronously), else, for a cache
larger than memory, read batch by batch from the memory-mapped file by DataLoader workers. A
batch is an index into the split in every case, so the three give the same batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from harclip.model.stream import Stream
from harclip.runtime.devices import host_memory_available

MEMORY_SHARE = 0.5
"""The share of the GPU's free memory, or of the host's available memory, that a split's
images may take there when `cache_in_memory` is auto."""

UPLOAD_ROWS = 1024
"""Images per host-to-GPU copy while a split is loaded onto the GPU."""

Placement = Literal["device", "host", "stream"]


def placement(nbytes: int, device: torch.device, cache_in_memory: bool | str,
              host_budget: int | None = None) -> Placement:
    """Where a split's images are kept: on the GPU ("device"), in host memory ("host"), or
    read from the memory-mapped cache batch by batch ("stream"). `True` never streams, `False`
    always does; auto streams a split larger than `host_budget` (MEMORY_SHARE of what the host
    has available unless given)."""
    if cache_in_memory is False:
        return "stream"
    if device.type == "cuda" and nbytes < MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]:
        return "device"
    if host_budget is None:  # each process on this machine holds its own copy
        host_budget = int(MEMORY_SHARE * host_memory_available()) // \
            max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return "host" if cache_in_memory is True or nbytes <= host_budget else "stream"


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
    """A split of the uint8 cache, kept where `placement` says: on the GPU, in host memory
    with each batch pinned and copied asynchronously, or streamed from the memory-mapped
    file."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 cache_in_memory: bool | str = "auto", host_budget: int | None = None) -> None:
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.device = device
        self.where = placement(images.nbytes, device, cache_in_memory, host_budget)
        if self.where == "stream":
            self.images = images
            self.stream = Stream(images, pin_memory=device.type == "cuda")
        elif self.where == "device":  # slice by slice: never a whole host copy
            self.images = torch.empty(images.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(images), UPLOAD_ROWS):
                self.images[start:start + UPLOAD_ROWS].copy_(
                    torch.from_numpy(np.array(images[start:start + UPLOAD_ROWS])))
        else:  # reads a memory-mapped cache into RAM
            self.images = torch.from_numpy(np.array(images))
        self.resident = self.where == "device" or \
            (self.where == "host" and device.type != "cuda")
        """Whether batches are indexed where the images are (the GPU, or a CPU run's RAM),
        rather than gathered on the host and uploaded."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def nbytes(self) -> int:
        return self.images.nbytes

    def image(self, row: int) -> np.ndarray:
        """One image (3×S×S uint8) on the host."""
        image = self.images[row]
        return image.cpu().numpy() if isinstance(image, torch.Tensor) else np.array(image)

    def host_index(self, order: torch.Tensor) -> torch.Tensor:
        """`order` ready for `batches`: in pinned memory on a GPU, so that each batch's
        indices go up without blocking the host."""
        return order.pin_memory() if self.device.type == "cuda" else order

    def batches(self, order: torch.Tensor, size: int,
                with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """(uint8 images, labels[, rows]) on the device, in `order` (a CPU index tensor; pass
        it through `host_index` first where no host sync is wanted). A streamed split serves
        one pass at a time: a pass not planned ends the one before."""
        indices = [order[start:start + size] for start in range(0, len(order), size)]
        reads = self.stream.take(indices) if self.where == "stream" else \
            (None for _ in indices)
        for index, streamed in zip(indices, reads, strict=True):
            on_device = index.to(self.device, non_blocking=True)
            if self.resident:
                images = self.images[on_device]
            elif streamed is not None:
                images = streamed.to(self.device, non_blocking=True)
            else:  # indexing copies the batch; pinning that copy makes the upload async
                images = self.images[index].pin_memory().to(self.device, non_blocking=True)
            yield (images, self.labels[on_device], on_device) if with_index else \
                (images, self.labels[on_device])

    def plan(self, batches: list[torch.Tensor]) -> None:
        """Announce the next pass's batches (an epoch's micro-batches, in order): a streamed
        split then reads ahead across the `batches` calls that ask for them."""
        if self.where == "stream":
            self.stream.plan(batches)


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
