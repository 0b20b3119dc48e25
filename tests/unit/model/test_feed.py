"""The feed: effective batches shared equally over the processes, a resident cache indexed
where it lies, and a split larger than the memory budget streamed with the same batches."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from harclip.data.cache import CacheItem, load_split, write_cache
from harclip.model.feed import (
    CachedSplit,
    effective_batches,
    placement,
    resident_cache_bytes,
    steps_per_epoch,
)
from harclip.runtime import devices
from harclip.runtime.errors import StageError


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


def _memory_mapped_split(tmp_path, count=37, size=16):
    """A split as the stages read it: load_split's memory map of a written cache."""
    rng = np.random.default_rng(0)
    items = [CacheItem(f"{i}.jpg", i % 3, f"h{i}",
                       rng.integers(0, 256, (3, size, size), dtype=np.uint8))
             for i in range(count)]
    write_cache(tmp_path, items, np.zeros(count, np.int64), ["a", "b", "c"], size)
    return load_split(tmp_path, "train")


def test_auto_streams_a_split_over_the_budget_and_true_or_false_decide_alone():
    cpu = torch.device("cpu")
    assert placement(10**6, cpu, "auto", host_budget=10**7) == "host"
    assert placement(10**6, cpu, "auto", host_budget=10**5) == "stream"
    assert placement(10**6, cpu, True, host_budget=10**5) == "host"
    assert placement(10**6, cpu, False, host_budget=10**7) == "stream"
    assert placement(10**6, cpu, "auto") == "host"  # a megabyte fits any test machine


@pytest.mark.parametrize("with_index", [False, True])
def test_a_streamed_split_gives_the_resident_splits_batches(tmp_path, with_index):
    images, labels = _memory_mapped_split(tmp_path)
    cpu = torch.device("cpu")
    resident = CachedSplit(images, labels, cpu, "auto")
    streamed = CachedSplit(images, labels, cpu, "auto", host_budget=images.nbytes // 2)
    assert resident.where == "host" and streamed.where == "stream"
    assert streamed.stream.rows.images is None and streamed.stream.rows.file is None
    assert resident_cache_bytes(streamed) == 0 < resident_cache_bytes(resident)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    pairs = zip(resident.batches(order, 8, with_index), streamed.batches(order, 8, with_index),
                strict=True)
    for ours, theirs in pairs:
        assert len(ours) == len(theirs)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert np.array_equal(streamed.image(5), images[5])


def test_streaming_leaves_the_global_random_stream_alone(tmp_path):
    images, labels = _memory_mapped_split(tmp_path)
    split = CachedSplit(images, labels, torch.device("cpu"), False)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    list(split.batches(torch.arange(len(labels)), 10))
    assert torch.equal(torch.rand(3), expected)


def test_a_view_into_a_memory_map_streams_its_own_rows(tmp_path):
    images, labels = _memory_mapped_split(tmp_path)
    view = images[10:20]
    split = CachedSplit(view, labels[10:20], torch.device("cpu"), False)
    (batch, _), = split.batches(torch.arange(10), 10)
    assert np.array_equal(batch.numpy(), images[10:20])


def test_an_epoch_planned_ahead_is_read_in_one_pass(tmp_path):
    images, labels = _memory_mapped_split(tmp_path)
    split = CachedSplit(images, labels, torch.device("cpu"), False)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(2))
    steps = [order[start:start + 8] for start in range(0, len(order), 8)]  # one step each
    micro = [step[start:start + 3] for step in steps for start in range(0, len(step), 3)]
    split.plan(micro)
    taken = [batch for step in steps for batch, _ in split.batches(step, 3)]
    assert np.array_equal(torch.cat(taken).numpy(), images[order.numpy()])
    assert split.stream.passes == 1  # every step's batches came from the planned pass
    streamed = torch.cat([b for step in steps for b, _ in split.batches(step, 3)])
    assert split.stream.passes == 1 + len(steps)  # unplanned: a pass per call
    assert np.array_equal(streamed.numpy(), images[order.numpy()])


def test_a_cache_replaced_under_a_streamed_run_is_an_error(tmp_path):
    images, labels = _memory_mapped_split(tmp_path)
    split = CachedSplit(images, labels, torch.device("cpu"), False)
    list(split.batches(torch.arange(8), 4))
    _memory_mapped_split(tmp_path, count=37)  # preprocess again: a new file, the same shape
    with pytest.raises(StageError, match="train_images.npy: replaced while this run"):
        list(split.batches(torch.arange(8), 4))


def test_auto_budgets_within_a_containers_memory_limit(tmp_path, monkeypatch):
    """A SLURM step's cgroup (v2) under its job's, which sets the limit: 1 GB, 896 MB used of
    which 128 MB is page cache the kernel reclaims first."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cgroup").write_text("0::/job/step\n")
    job, step = tmp_path / "cg" / "job", tmp_path / "cg" / "job" / "step"
    step.mkdir(parents=True)
    for level, limit, used in ((job, str(2**30), 2**29 + 2**28 + 2**27), (step, "max", 2**20)):
        (level / "memory.max").write_text(f"{limit}\n")
        (level / "memory.current").write_text(f"{used}\n")
        (level / "memory.stat").write_text(f"anon 1\ninactive_file {2**27}\nactive_file 3\n")
    monkeypatch.setattr(devices, "PROC_SELF", tmp_path / "proc")
    monkeypatch.setattr(devices, "CGROUP_ROOT", tmp_path / "cg")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert devices.host_memory_available() == 2**28  # 1 GB less 768 MB
    assert placement(2**27 - 1, torch.device("cpu"), "auto") == "host"  # half of 256 MB
    assert placement(2**27 + 1, torch.device("cpu"), "auto") == "stream"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes here, each its own copy
    assert placement(2**26 + 1, torch.device("cpu"), "auto") == "stream"
    (job / "memory.max").write_text("max\n")  # no limit anywhere: the host's own
    assert devices.host_memory_available() > 2**28


def test_a_read_error_in_a_worker_is_one_line(tmp_path):
    images, labels = _memory_mapped_split(tmp_path)
    split = CachedSplit(images, labels, torch.device("cpu"), False)
    path = tmp_path / "train_images.npy"
    size = path.stat().st_size
    identity = split.stream.rows.identity
    with open(path, "r+b") as handle:  # the same file, cut short in place
        handle.truncate(size // 2)
    split.stream.rows.identity = (*identity[:2], size // 2)
    with pytest.raises(StageError) as raised:
        list(split.batches(torch.arange(len(labels) - 4, len(labels)), 4))
    assert str(raised.value) == (f"{path}: shorter than its header says; rebuild the cache "
                                 f"with `dvc repro preprocess`")


def test_a_process_that_dies_of_an_error_while_streaming_exits(tmp_path):
    """Its split outlives torch's own clean-up (the traceback holds it): the workers must still
    end, and the process with them."""
    _memory_mapped_split(tmp_path)
    script = ("import sys, torch; from harclip.data.cache import load_split; "
              "from harclip.model.feed import CachedSplit; "
              f"split = CachedSplit(*load_split(__import__('pathlib').Path({str(tmp_path)!r}), "
              "'train'), torch.device('cpu'), False); "
              "next(split.batches(torch.arange(8), 4)); raise ValueError('boom')")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": "src"})
    assert result.returncode == 1 and "ValueError: boom" in result.stderr
    assert time.monotonic() - started < 60
