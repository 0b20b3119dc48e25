"""Data parallelism under torchrun: which process this is, and collectives that cost nothing
when it runs alone.

A training stage whose `nprocs` is above 1 relaunches itself under torchrun (one process per
GPU, or gloo processes on CPU); under a torchrun started by hand (multi-node, or one process)
it joins the process group torchrun describes in its environment variables. A process that
waits for another longer than HARCLIP_DIST_TIMEOUT_S (a machine is gone) ends the run.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from harclip.runtime.devices import resolve_device
from harclip.runtime.errors import StageError
from harclip.runtime.log import log

TIMEOUT_VARIABLE = "HARCLIP_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600
"""How long a process waits for the others, in a collective or to join the group, before the
run ends: NCCL's own default, and gloo's 30 minutes would keep the machines left waiting
that long for one that is gone. Above the longest wait of a live run (rank 0 saving a
resume state while the others wait for the next epoch)."""
_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; one process is a world of one."""

    rank: int = 0
    size: int = 1
    local_size: int = 1
    """Processes on this machine."""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    """Where this process trains, and where its collectives' tensors live."""
    grouped: bool = False
    """In a process group (under torchrun), even one of a single process: gradients then go
    through DistributedDataParallel."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0

    def reduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """All-reduce `tensor` in place across the processes (a no-op alone) and return it."""
        if self.size > 1:
            dist.all_reduce(tensor, op=_OPS[op])
        return tensor

    def reduce(self, value: float, op: str) -> float:
        return self.reduce_(torch.tensor(value, dtype=torch.float64, device=self.device),
                            op).item()

    def wait_for_all(self) -> None:
        """Return once every process is here (a no-op alone): an epoch's clock then starts
        after rank 0's saves of the one before, not during them."""
        if self.size > 1:
            dist.barrier(device_ids=[self.device.index]) if self.device.type == "cuda" \
                else dist.barrier()

    def gather_rows(self, share: torch.Tensor, total: int) -> torch.Tensor:
        """The whole `total`-row tensor from every process's share, rows[rank::size] (the
        split `torch.arange(rank, total, size)` gives), back in row order."""
        if self.size == 1:
            return share
        per = -(-total // self.size)
        padded = share.new_zeros((per, *share.shape[1:]))
        padded[:len(share)] = share
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.stack(parts, dim=1).flatten(0, 1)[:total]  # row i·size + rank


ALONE = World()


def launched() -> bool:
    """True inside a process torchrun started."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def process_device(name: str, local_rank: int, size: int) -> str:
    """The device this process trains on: with several processes, GPU `local_rank` each."""
    if size == 1 or name == "cpu":
        return name
    if name not in ("auto", "cuda"):
        raise StageError(f"device {name!r} with {size} processes: each process takes the GPU "
                         f"of its local rank; set device: auto, cuda or cpu")
    if name == "auto" and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank}"


def join(device_name: str) -> World:
    """This process's World: alone, or in the process group torchrun set up (NCCL on GPUs,
    gloo on CPU), joined here unless the caller already did."""
    rank, local_rank, size = (int(os.environ.get(key, 0 if key.endswith("RANK") else 1))
                              for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    device = resolve_device(process_device(device_name, local_rank, size))
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=group_timeout())
    if rank != 0:
        log.setLevel("WARNING")  # rank 0 speaks for all
    return World(rank, size, local_size, device, grouped=dist.is_initialized())


def group_timeout() -> datetime.timedelta:
    """HARCLIP_DIST_TIMEOUT_S (seconds), else DEFAULT_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        seconds = 0
    if not 0 < seconds < float("inf"):
        raise StageError(f"{TIMEOUT_VARIABLE}={text!r}: expected a number of seconds above 0")
    return datetime.timedelta(seconds=seconds)


LOST_CONNECTION = re.compile(r"connection|closed|reset|broken pipe|timed? ?out|timeout|"
                             r"read error|write error", re.IGNORECASE)
"""What gloo says of a peer gone (not of a misuse, such as an unsupported operation)."""


def lost_peer(err: BaseException) -> str | None:
    """The one line a process ends with when its process group broke (another process, or its
    machine, is gone or stopped answering for the timeout); None for any other error."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or not isinstance(err, RuntimeError):
        return None
    text = " ".join(str(err).split())
    if not isinstance(err, dist.DistError) and not (
            "gloo" in text.lower() and LOST_CONNECTION.search(text)):
        return None
    cause = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0].rstrip(".")  # gloo: [file:line]
    return (f"lost contact with another training process ({cause[:160]}): a machine of this "
            f"run, or a process on it, is gone or did not answer within {TIMEOUT_VARIABLE} "
            f"({group_timeout().total_seconds():g} s); see the other machines' output, then "
            f"rerun the command on every machine to resume after the last saved epoch")


def data_parallel(module: nn.Module) -> DistributedDataParallel:
    """`module` under DistributedDataParallel without a buffer broadcast every forward (the
    models' buffers are constants): `forward_sync_buffers=False` from torch 2.13 on,
    `broadcast_buffers=False` before it (the GPU machines' torch 2.11 knows only that one)."""
    accepted = inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = "forward_sync_buffers" if "forward_sync_buffers" in accepted \
        else "broadcast_buffers"
    return DistributedDataParallel(module, gradient_as_bucket_view=True,
                                   **{no_buffer_sync: False})


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch(nprocs: int, device_name: str, module: str, args: list[str]) -> NoReturn:
    """Replace this process with harclip's `torchrun --standalone` running `module` in `nprocs`
    processes on this machine; fails first when there are fewer GPUs than processes."""
    if resolve_device(device_name).type == "cuda" and torch.cuda.device_count() < nprocs:
        raise StageError(f"nprocs {nprocs} but only {torch.cuda.device_count()} GPU(s) are "
                         f"visible; lower nprocs or set CUDA_VISIBLE_DEVICES")
    log.info("launching %d processes with torchrun", nprocs)
    for handler in log.handlers + logging.getLogger().handlers:
        handler.flush()
    command = [sys.executable, "-m", "harclip.runtime.torchrun", "--standalone",
               f"--nproc-per-node={nprocs}", "-m", module, *args]
    os.execv(sys.executable, command)
