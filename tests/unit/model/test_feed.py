"""The feed: effective batches shared equally over the processes, and a resident cache indexed
where it lies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harclip.model.feed import (
    CachedSplit,
    effective_batches,
    resident_cache_bytes,
    steps_per_epoch,
)


def test_a_resident_cache_is_indexed_where_it_lies_whatever_the_devices_name():
    """The same mismatch on the CPU (`cpu:0` is not `cpu`): batches come from the resident
    cache, with no pinned host copy, and its bytes are taken off the peak."""
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    split = CachedSplit(images, np.arange(4), torch.device("cpu", 0))
    assert split.resident and resident_cache_bytes(split) == images.nbytes
    batch, labels = next(split.batches(torch.arange(4), 4))  # pinning would need CUDA
    assert batch.shape == (4, 3, 8, 8) and labels.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("images", "batch", "processes"),
                         [(100, 32, 1), (100, 32, 2), (97, 32, 2), (65, 32, 4), (64, 32, 8)])
def test_every_step_splits_evenly_over_the_processes(images, batch, processes):
    groups = list(effective_batches(torch.arange(images), batch, processes))
    assert len(groups) == steps_per_epoch(images, batch, processes)
    assert all(len(g) % processes == 0 and 0 < len(g) <= batch for g in groups)
    used = torch.cat(groups)
    assert len(set(used.tolist())) == len(used)  # no image twice
    assert images - len(used) < processes  # at most processes - 1 sit out
