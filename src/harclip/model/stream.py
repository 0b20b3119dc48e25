"""A split streamed from its cache file, for a cache larger than memory: PyTorch DataLoader
workers read each batch's rows with positioned reads (adjacent rows in one read), a whole
epoch's batches ahead of the steps that use them.

The workers are spawned, not forked: a forked worker would inherit the stage's run lock and its
process group's sockets (keeping them past the stage's death), and the CUDA state. They ignore
SIGINT and end quietly on SIGTERM (a worker killed by a group's signal would make the
DataLoader raise its own traceback), and end by themselves when the stage is gone. Batch
indices travel as numpy copies: a tensor sent to a worker would move its whole storage, the
epoch's pinned order, into shared memory.
"""

from __future__ import annotations

import atexit
import mmap
import os
import signal
import weakref
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from harclip.runtime.errors import StageError


def _identity(path: str) -> tuple[int, int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino, stat.st_size


class CacheRows(Dataset):
    """Batches of a split's rows, read from its .npy by positioned reads (no memory map: the
    pages it reads stay the page cache's to keep or drop) or taken from an in-memory array."""

    def __init__(self, images: np.ndarray) -> None:
        self.shape = images.shape
        self.row_bytes = int(np.prod(images.shape[1:]))
        # A whole file's map (load_split's), not a view into one: a view keeps its parent's
        # offset, so its own rows could not be found from it.
        mapped = isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
        self.path, self.offset = (images.filename, images.offset) if mapped else (None, 0)
        self.identity = _identity(self.path) if mapped else None
        self.images = None if mapped else images
        self.file: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "file": None}

    def check_unchanged(self) -> None:
        """Fail where the file was replaced since the split's labels were read (a
        `dvc checkout` or a preprocess run meanwhile): its rows would not be those labels'."""
        if self.path and _identity(self.path) != self.identity:
            raise StageError(f"{self.path}: replaced while this run was reading it (a "
                             f"preprocess or `dvc checkout` meanwhile?); rerun the stage")

    def __getitem__(self, rows: np.ndarray) -> torch.Tensor:
        if self.images is not None:
            return torch.from_numpy(np.ascontiguousarray(self.images[rows]))
        if self.file is None:
            self.file = os.open(self.path, os.O_RDONLY)
            stat = os.fstat(self.file)
            if (stat.st_dev, stat.st_ino, stat.st_size) != self.identity:
                raise StageError(f"{self.path}: replaced while this run was reading it (a "
                                 f"preprocess or `dvc checkout` meanwhile?); rerun the stage")
        ascending = np.argsort(rows, kind="stable")
        ordered = rows[ascending]
        batch = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        starts = np.flatnonzero(np.diff(ordered, prepend=-2) != 1)  # runs of adjacent rows
        for first, end in zip(starts, [*starts[1:], len(ordered)], strict=True):
            view = memoryview(batch[first:end]).cast("B")
            position = self.offset + int(ordered[first]) * self.row_bytes
            while len(view):
                read = os.preadv(self.file, [view], position)
                if not read:
                    raise StageError(f"{self.path}: shorter than its header says; rebuild "
                                     f"the cache with `dvc repro preprocess`")
                view, position = view[read:], position + read
        return torch.from_numpy(batch)[torch.from_numpy(np.argsort(ascending))]

    def __len__(self) -> int:
        return self.shape[0]


class PassBatches(Sampler):
    """The batches (row arrays) of the pass about to start."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _quiet_worker(_worker: int) -> None:
    """Ctrl-C is the stage's to handle; SIGTERM (a group's stop, or the loader's own
    terminate) ends a worker at once with status 0, which the loader does not report as a
    crash, and never leaves one that a join at exit would wait on forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


def stream_workers() -> int:
    """Workers per streamed split: copying rows is light work, so a quarter of this
    process's share of the cores (one to four) keeps a GPU fed without taking the
    training's CPU."""
    share = len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(4, share // 4))


_OPEN: weakref.WeakSet[Stream] = weakref.WeakSet()


@atexit.register  # after torch's own exit hook, so it runs first, while shutdown still works
def _close_all() -> None:
    """End every stream's workers at exit, in order, where an unhandled error keeps a split
    alive past torch's own clean-up."""
    for stream in list(_OPEN):
        stream.close()


class Stream:
    """One loader, so one set of workers, for every pass over a split. `plan` announces a
    pass's batches (an epoch's micro-batches, given out a step at a time by `take`); a pass
    not planned starts at its first `take`, ending the one before."""

    def __init__(self, images: np.ndarray, pin_memory: bool) -> None:
        self.rows, self.next_pass = CacheRows(images), PassBatches()
        # Seeds for the workers from the loader's own generator, never the global one the
        # run's randomness comes from.
        self.loader = DataLoader(self.rows, batch_size=None, sampler=self.next_pass,
                                 num_workers=stream_workers(), prefetch_factor=4,
                                 persistent_workers=True, multiprocessing_context="spawn",
                                 worker_init_fn=_quiet_worker, generator=torch.Generator(),
                                 pin_memory=pin_memory)
        self.planned: deque[torch.Tensor] = deque()
        self.reading: Iterator[torch.Tensor] = iter(())
        self.passes = 0
        _OPEN.add(self)

    def close(self) -> None:
        """Stop the workers now (torch keeps a persistent loader's in its private
        `_iterator`)."""
        iterator, self.loader._iterator = self.loader._iterator, None
        self.reading = iter(())
        if iterator is not None:
            iterator._shutdown_workers()

    def plan(self, batches: list[torch.Tensor]) -> None:
        self.rows.check_unchanged()
        self.next_pass.batches = [batch.numpy().copy() for batch in batches]
        self.planned, self.reading = deque(batches), iter(self.loader)
        self.passes += 1

    def take(self, batches: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of `batches`: read ahead where they are the plan's next ones, else
        from a pass of their own."""
        planned = len(self.planned) >= len(batches) and all(
            torch.equal(batch, expected)
            for batch, expected in zip(batches, self.planned, strict=False))
        if not planned:
            self.plan(batches)
        this_pass = self.passes
        for _ in batches:
            if self.passes != this_pass:
                raise RuntimeError("a streamed split serves one pass at a time")
            try:
                images = next(self.reading)
            except Exception as err:
                self.planned.clear()
                if not str(err).startswith("Caught "):
                    raise
                # torch's copy of a worker's error holds its traceback: keep its last line
                raise StageError(str(err).strip().splitlines()[-1].split(": ", 1)[-1]) \
                    from None
            self.planned.popleft()
            yield images
