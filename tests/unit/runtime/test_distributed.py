"""Processes and devices under torchrun: DistributedDataParallel built with the keyword the
installed torch knows, one GPU per local rank, a clear error before launching more
processes than GPUs, a bounded wait for the others, and one line when they are gone."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

import pytest
import torch
import torch.distributed as dist
from torch import nn

from harclip.runtime import distributed
from harclip.runtime.distributed import group_timeout, lost_peer, process_device, relaunch
from harclip.runtime.errors import StageError


class Torch211DDP:
    """DistributedDataParallel's signature in torch 2.11 (no forward_sync_buffers: it came in
    2.13); records what it was built with."""

    built: ClassVar[dict] = {}

    def __init__(self, module, device_ids=None, output_device=None, dim=0,
                 broadcast_buffers=True, init_sync=True, process_group=None, bucket_cap_mb=None,
                 find_unused_parameters=False, check_reduction=False,
                 gradient_as_bucket_view=False, static_graph=False,
                 delay_all_reduce_named_params=None, param_to_hook_all_reduce=None,
                 mixed_precision=None, device_mesh=None, skip_all_reduce_unused_params=False):
        Torch211DDP.built = {"broadcast_buffers": broadcast_buffers,
                             "gradient_as_bucket_view": gradient_as_bucket_view}


@pytest.mark.slow
def test_each_process_takes_the_gpu_of_its_local_rank():
    assert process_device("cpu", 3, 4) == "cpu"
    assert process_device("cuda:1", 0, 1) == "cuda:1"  # alone, any device
    assert process_device("cuda", 3, 4) == "cuda:3"
    assert process_device("auto", 3, 4) == ("cuda:3" if torch.cuda.is_available() else "cpu")
    with pytest.raises(StageError, match="each process takes the GPU of its local rank"):
        process_device("cuda:1", 0, 2)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="needs fewer than 2 GPUs")
def test_asking_for_more_gpus_than_there_are_fails_before_launching():
    with pytest.raises(StageError, match="no CUDA GPU is visible|only 1 GPU"):
        relaunch(2, "cuda", "harclip.train", ["clip"])


def test_ddp_is_built_with_the_buffer_keyword_torch_211_knows(monkeypatch):
    monkeypatch.setattr(distributed, "DistributedDataParallel", Torch211DDP)
    distributed.data_parallel(nn.Linear(2, 2))
    assert Torch211DDP.built == {"broadcast_buffers": False, "gradient_as_bucket_view": True}


def test_the_wait_for_the_other_processes_is_bounded_by_harclip_dist_timeout_s(monkeypatch):
    monkeypatch.delenv("HARCLIP_DIST_TIMEOUT_S", raising=False)
    assert group_timeout() == timedelta(seconds=600)  # NCCL's own default; gloo's is 30 min
    monkeypatch.setenv("HARCLIP_DIST_TIMEOUT_S", "90")
    assert group_timeout() == timedelta(seconds=90)
    for text in ("0", "-5", "ten", "inf", "nan"):
        monkeypatch.setenv("HARCLIP_DIST_TIMEOUT_S", text)
        with pytest.raises(StageError, match=f"HARCLIP_DIST_TIMEOUT_S='{text}': expected a "):
            group_timeout()


GLOO_RESET = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read "
              "error [127.0.0.1]:16299: Connection reset by peer. This is typically caused by "
              "a remote worker hanging or bugs in the application. Check the logs of the "
              "remote worker before reporting an error. GLHF!")


def test_a_broken_process_group_is_one_line_and_other_errors_are_not(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("HARCLIP_DIST_TIMEOUT_S", "45")
    line = lost_peer(RuntimeError(GLOO_RESET))
    assert line.startswith("lost contact with another training process (Read error "
                           "[127.0.0.1]:16299: Connection reset by peer): ")
    assert "within HARCLIP_DIST_TIMEOUT_S (45 s)" in line and "rerun" in line
    assert lost_peer(dist.DistNetworkError("Failed to recv, got 0 bytes.\nframe #0")) \
        .startswith("lost contact with another training process (Failed to recv, got 0 bytes)")
    for line in (lost_peer(RuntimeError(GLOO_RESET)), lost_peer(dist.DistStoreError("x\ny"))):
        assert "\n" not in line
    assert lost_peer(RuntimeError("CUDA error: out of memory")) is None
    assert lost_peer(ValueError("gloo")) is None
    assert lost_peer(RuntimeError("[gloo] unsupported reduction operation")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")  # alone, no group to lose
    assert lost_peer(RuntimeError(GLOO_RESET)) is None
