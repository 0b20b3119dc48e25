"""Data parallelism under torchrun: which process this is, and collectives that cost nothing
when it runs alone.

A training stage whose `nprocs` is above 1 relaunches itself under torchrun (one process per
GPU, or gloo processes on CPU); under a torchrun started by hand (multi-node, or one process)
it joins the process group torchrun describes in its environment variables.
"""

from __future__ import annotations

import inspect
import logging
import os
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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if rank != 0:
        log.setLevel("WARNING")  # rank 0 speaks for all
    return World(rank, size, local_size, device, grouped=dist.is_initialized())


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
    """Replace this process with `torchrun --standalone` running `module` in `nprocs`
    processes on this machine; fails first when there are fewer GPUs than processes."""
    if resolve_device(device_name).type == "cuda" and torch.cuda.device_count() < nprocs:
        raise StageError(f"nprocs {nprocs} but only {torch.cuda.device_count()} GPU(s) are "
                         f"visible; lower nprocs or set CUDA_VISIBLE_DEVICES")
    # torchrun would pin every process to one thread; share the cores out instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    log.info("launching %d processes with torchrun", nprocs)
    for handler in log.handlers + logging.getLogger().handlers:
        handler.flush()
    command = [sys.executable, "-m", "harclip.runtime.distributed", "--standalone",
               f"--nproc-per-node={nprocs}", "-m", module, *args]
    os.execv(sys.executable, command)


def torchrun_quietly(argv: list[str]) -> NoReturn:
    """torchrun, whose failures are its workers' own one-line errors: it exits with the first
    failed worker's status (128 + signal for a signal) without its launcher's ChildFailedError
    report and traceback, or its agent's warnings about stopping the other workers."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        code = err.get_first_failure()[1].exitcode
        sys.exit(128 - code if code < 0 else code or 1)
    except SignalException as err:
        sys.exit(128 + int(err.sigval))
    sys.exit(0)


if __name__ == "__main__":
    torchrun_quietly(sys.argv[1:])
