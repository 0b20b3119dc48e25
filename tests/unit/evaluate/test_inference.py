"""What a checkpoint costs to serve: the throughput of a timed scoring pass and one image's
latency, positive and counted over what they say; on the CPU no GPU path is taken."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harclip.evaluate import inference
from harclip.model.backbones import preprocessing_of
from harclip.model.classifier import build_model
from harclip.model.feed import CachedSplit
from harclip.model.scoring import split_logits
from harclip.model.views import DeviceAugment
from tests.support.params import train_config

CPU = torch.device("cpu")


def test_the_timed_pass_and_the_latency_are_positive_and_take_no_gpu_path_on_the_cpu(
        monkeypatch):
    def no_gpu(*_args, **_kwargs):
        raise AssertionError("a GPU-only call on the CPU")

    monkeypatch.setattr(torch.cuda, "synchronize", no_gpu)
    monkeypatch.setattr(torch.cuda, "current_device", no_gpu)
    torch.manual_seed(0)
    model, _ = build_model(train_config())
    rng = np.random.default_rng(0)
    split = CachedSplit(rng.integers(0, 256, (10, 3, 64, 64), dtype=np.uint8),
                        np.arange(10) % 15, CPU)
    view = DeviceAugment.for_eval(preprocessing_of(model.clip))
    inference.warm_up(model, split, view, 4, None)
    logits, _ = inference.timed_logits(model, split, view, 4, None)
    assert np.array_equal(logits, split_logits(model, split, view, 4, None).numpy())
    cost = inference.inference_cost(model, split, 0.5, view, 4, None, temperature=1.5)
    assert (cost["batch_size"], cost["img_s"]) == (4, 20.0)  # the timed pass: 10 images in 0.5 s
    assert "CPU cores" in cost["device"]
    assert 0 < cost["latency_ms_p50"] <= cost["latency_ms_p95"]


@pytest.mark.parametrize("runs", [1, 7])
def test_latency_is_timed_over_the_runs_after_the_warm_up(monkeypatch, runs):
    monkeypatch.setattr(inference, "LATENCY_RUNS", runs)
    calls = []
    monkeypatch.setattr(inference, "probabilities",
                        lambda *args: calls.append(args) or torch.ones(1, 15))
    p50, p95 = inference.latency_ms(torch.nn.Identity(), np.zeros((3, 8, 8), np.uint8), None,
                                    None, 1.0, CPU)
    assert len(calls) == inference.LATENCY_WARM_UP + runs and 0 < p50 <= p95
    assert calls[0][4] == 1.0  # the temperature reaches the probabilities
