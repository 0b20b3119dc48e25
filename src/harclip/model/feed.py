"""The training feed: the uint8 cache where the model runs, batches taken from it in an
epoch's order, and the effective batches every process shares equally.

No JPEG is decoded during training. A split's images are loaded once onto the GPU when they
fit, else into host memory (each batch pinned and copied asynchronously), else, for a cache
larger than memory, read batch by batch from the memory-mapped file by DataLoader workers. A
batch is an index into the split in every case, so the three give the same batches.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harclip.runtime.devices import host_memory_available

MEMORY_SHARE = 0.5
"""The share of the GPU's free memory, or of the host's available memory, that a split's
images may take there when `cache_in_memory` is auto."""

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
    if host_budget is None:
        host_budget = int(MEMORY_SHARE * host_memory_available())
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


class CacheRows(Dataset):
    """Batches of a split's rows read from its memory-mapped file, the rows of each batch in
    file order (runs of adjacent rows read as one). Each worker maps the file itself: a
    memory map sent to a spawned process would be copied whole."""

    def __init__(self, images: np.ndarray) -> None:
        self.shape = images.shape
        # A whole file's map (load_split's), not a view into one: a view keeps its parent's
        # offset, so its own rows could not be found from it.
        mapped = isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
        self.source = (images.filename, images.offset) if mapped else None
        self.images = None if mapped else images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "images": None} if self.source else self.__dict__

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        if self.images is None:
            filename, offset = self.source
            self.images = np.memmap(filename, np.uint8, "r", offset, self.shape)
        ascending = torch.argsort(rows)
        batch = torch.empty((len(rows), *self.shape[1:]), dtype=torch.uint8)
        batch[ascending] = torch.from_numpy(self.images[rows[ascending].numpy()])
        return batch

    def __len__(self) -> int:
        return self.shape[0]


class EpochBatches(Sampler):
    """The batches (index tensors) of the pass about to run: one loader, and so one set of
    worker processes, serves every epoch of a split."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def stream_workers() -> int:
    """DataLoader workers reading a streamed split: copying rows is light work, so a quarter
    of the cores (one to four) keeps a GPU fed without taking the training's CPU."""
    return max(1, min(4, len(os.sched_getaffinity(0)) // 4))


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
            self.rows, self.next_batches = CacheRows(images), EpochBatches()
            # Seeds for the workers from the loader's own generator, never the global one the
            # run's randomness comes from.
            self.loader = DataLoader(self.rows, batch_size=None, sampler=self.next_batches,
                                     num_workers=stream_workers(), prefetch_factor=4,
                                     persistent_workers=True, generator=torch.Generator(),
                                     pin_memory=device.type == "cuda")
        else:  # reads a memory-mapped cache into RAM
            array = torch.from_numpy(np.array(images))
            self.images = array.to(device) if self.where == "device" else array
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
        one pass at a time: a new pass ends the one before."""
        indices = [order[start:start + size] for start in range(0, len(order), size)]
        for index, streamed in zip(indices, self._streamed(indices), strict=True):
            on_device = index.to(self.device, non_blocking=True)
            if self.resident:
                images = self.images[on_device]
            elif streamed is not None:
                images = streamed.to(self.device, non_blocking=True)
            else:  # indexing copies the batch; pinning that copy makes the upload async
                images = self.images[index].pin_memory().to(self.device, non_blocking=True)
            yield (images, self.labels[on_device], on_device) if with_index else \
                (images, self.labels[on_device])

    def _streamed(self, indices: list[torch.Tensor]) -> Iterator[torch.Tensor | None]:
        """The batches read ahead by the loader's workers (pinned on a GPU) where the split
        streams; else None for each."""
        if self.where != "stream":
            yield from (None for _ in indices)
            return
        self.next_batches.batches = indices
        yield from self.loader


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
