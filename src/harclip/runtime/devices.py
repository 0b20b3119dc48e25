"""The machine: which device a run uses, its precision, its clocks and peak memory, and a
one-line description for recorded results."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from pathlib import Path

import torch

from harclip.runtime.errors import StageError

PROC_SELF = Path("/proc/self")


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """What a figure measured on `device` ran on: the GPU's name, or the CPU cores'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"{len(os.sched_getaffinity(0))} CPU cores ({_cpu_model()})"


def describe() -> str:
    cpu = _cpu_model()
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    gpu = f", GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{len(os.sched_getaffinity(0))} CPU cores ({cpu}){memory}{gpu}"


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}
"""A cgroup's memory limit, use and the part of its use the kernel reclaims first (page cache
not recently used), in cgroup v2 and v1."""


def _cgroup_memory_left() -> int | None:
    """What this process's cgroup, and each above it, still allows (a container's or a batch
    job's limit less its use, reclaimable page cache not counted); None where none says."""
    try:
        entries = (PROC_SELF / "cgroup").read_text().splitlines()
    except OSError:
        return None
    left = None
    for entry in entries:
        _, controllers, path = entry.split(":", 2)
        if controllers and "memory" not in controllers.split(","):
            continue
        version = 1 if controllers else 2
        base = CGROUP_ROOT / "memory" if version == 1 else CGROUP_ROOT
        folder = base / path.lstrip("/")
        limit_name, usage_name, reclaimable = CGROUP_FILES[version]
        for level in [folder, *folder.parents]:
            if not level.is_relative_to(base):
                break
            with contextlib.suppress(OSError, ValueError):
                used = int((level / usage_name).read_text())
                for line in (level / "memory.stat").read_text().splitlines():
                    if line.startswith(reclaimable + " "):
                        used -= int(line.split()[1])
                room = int((level / limit_name).read_text()) - used
                left = room if left is None else min(left, room)
    return left


def host_memory_available() -> int:
    """Bytes this process can still take without swapping or meeting its container's (or
    SLURM job's) limit: MemAvailable (free memory and the page cache it may drop), else the
    free pages, and never more than its cgroups allow."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if (left := _cgroup_memory_left()) is not None:
        available = min(available, left)
    return max(0, available)


def resolve_device(name: str) -> torch.device:
    """The device `name` means, a GPU always with its index: tensors moved to
    `torch.device("cuda")` report `cuda:0`, and the two do not compare equal."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"device {name!r} asked for, but no CUDA GPU is visible; "
                         f"set device: auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def enable_tf32(device: torch.device) -> None:
    """On a GPU, TF32 for the fp32 matmuls that run outside autocast (the fp32 class head,
    the loss): same range as fp32, several times the throughput on tensor cores. The
    long-standing switch: torch 2.9's `fp32_precision` settings make the older getters, which
    Inductor's autotuning still calls, raise."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start this epoch's peak: CUDA's allocator statistics, or on Linux the peak resident set
    (VmHWM; getrusage's ru_maxrss would also count the memory of the process this one was
    forked from, a 4 GB test runner say)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        (PROC_SELF / "clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory since `reset_peak_memory`; on CPU, the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError, ValueError, IndexError):
        status = (PROC_SELF / "status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
