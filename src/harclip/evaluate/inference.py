"""What a checkpoint costs to serve, on the evaluation device: throughput at the evaluation
batch size, from the uint8 cache to logits, and one image's latency, from a decoded image to
its calibrated probabilities. Both are timed after a warm-up; on a GPU the device is waited
for only at the ends of a timed region, never inside it. The throughput is the held-out split's
own scoring pass, which the evaluate stage runs anyway (after the val pass, which warms it
up): timing it costs nothing."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from harclip.model.feed import CachedSplit
from harclip.model.scoring import probabilities, split_logits
from harclip.model.views import DeviceAugment
from harclip.runtime.devices import device_name, synchronize

LATENCY_RUNS, LATENCY_WARM_UP = 50, 5


def warm_up(model: nn.Module, split: CachedSplit, view: DeviceAugment, batch_size: int,
            dtype: torch.dtype | None) -> None:
    """One batch through the model, so a pass timed after it runs in the steady state (where
    no other pass precedes the timed one), and `view`'s mean and std are on the device."""
    split_logits(model, split, view, batch_size, dtype, torch.arange(min(batch_size,
                                                                         len(split))))


def timed_logits(model: nn.Module, split: CachedSplit, view: DeviceAugment, batch_size: int,
                 dtype: torch.dtype | None) -> tuple[np.ndarray, float]:
    """A split's logits (in host memory), and the seconds they took: the device is waited for
    before the clock starts, and the logits' copy to the host waits for it at the end. No
    copy inside: the rows go up from pinned memory, and `view` is one already used on this
    device (its mean and std are there)."""
    rows = split.host_index(torch.arange(len(split)))
    synchronize(split.device)
    started = time.perf_counter()
    logits = split_logits(model, split, view, batch_size, dtype, rows).cpu().numpy()
    return logits, time.perf_counter() - started


@torch.no_grad()
def latency_ms(model: nn.Module, image: np.ndarray, view: DeviceAugment,
               dtype: torch.dtype | None, temperature: float,
               device: torch.device) -> tuple[float, float]:
    """(p50, p95) milliseconds from a decoded uint8 image (3×S×S, in host memory) to its
    probabilities back in host memory, over LATENCY_RUNS runs after LATENCY_WARM_UP."""
    model.eval()
    seconds = []
    for run in range(LATENCY_WARM_UP + LATENCY_RUNS):
        started = time.perf_counter()
        batch = torch.from_numpy(np.ascontiguousarray(image)[None]).to(device)
        probabilities(model, batch, view, dtype, temperature).cpu()  # .cpu() waits for it
        if run >= LATENCY_WARM_UP:
            seconds.append(time.perf_counter() - started)
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return float(p50), float(p95)


def inference_cost(model: nn.Module, split: CachedSplit, seconds: float, view: DeviceAugment,
                   batch_size: int, dtype: torch.dtype | None, temperature: float) -> dict:
    """report.json's `inference`: the device, the batch size, the img/s of the split's timed
    scoring pass (`seconds`), and one image's latency p50 / p95."""
    image = split.image(0)
    p50, p95 = latency_ms(model, image, view, dtype, temperature, split.device)
    return {"device": device_name(split.device), "batch_size": batch_size,
            "img_s": round(len(split) / seconds, 1),
            "latency_ms_p50": round(p50, 3), "latency_ms_p95": round(p95, 3)}
