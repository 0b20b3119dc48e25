"""Devices: a GPU resolved with its index, and TF32 turned on for a GPU only."""

from __future__ import annotations

import torch

from harclip.runtime import devices


def test_tf32_is_turned_on_for_a_gpu_only():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        devices.enable_tf32(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
        devices.enable_tf32(torch.device("cuda", 0))  # sets a flag; needs no GPU
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32  # the getter Inductor calls still works
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_gpu_is_resolved_with_its_index(monkeypatch):
    """Tensors moved to `cuda` report `cuda:0`, which does not equal `cuda`: a device without
    its index made a single-GPU run take the host path for a cache already on the GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert torch.device("cuda") != torch.device("cuda", 0)
    for name in ("auto", "cuda", "cuda:0"):
        assert devices.resolve_device(name) == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
