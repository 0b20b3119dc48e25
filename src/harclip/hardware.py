"""The machine: which device a run uses, and a one-line description for recorded results."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from harclip.stage import StageError


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    gpu = f", GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{len(os.sched_getaffinity(0))} CPU cores ({cpu}){memory}{gpu}"


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
