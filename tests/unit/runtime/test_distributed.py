"""Processes and devices under torchrun: DistributedDataParallel built with the keyword the
installed torch knows, one GPU per local rank, and a clear error before launching more
processes than GPUs."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

from harclip.runtime import distributed
from harclip.runtime.distributed import process_device, relaunch
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
