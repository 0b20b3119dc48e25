"""Predicting the classes of image files with a trained checkpoint (its own class names):
the work behind `python -m harclip.predict`.

Each image goes through the checkpoint's own preprocessing (its input size and
normalisation); directories are read recursively and scored in batches. A file that is not an
image, or one of more pixels than PIL's limit (a decompression bomb), is reported and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harclip.augment import DeviceAugment
from harclip.decode import BadImage, decode
from harclip.hardware import autocast, autocast_dtype
from harclip.models import HarClassifier


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probabilities: list[float]


def _decoded(files: list[Path], size: int, fit: str,
             skipped: list[tuple[Path, str]]) -> Iterator[tuple[Path, np.ndarray]]:
    for path in files:
        try:
            yield path, decode(path.read_bytes(), size, fit)
        except (BadImage, OSError) as err:
            skipped.append((path, str(err)))


@torch.no_grad()
def predict(model: HarClassifier, meta: dict, files: list[Path], top_k: int = 3,
            batch_size: int = 64, fit: str = "crop", device: torch.device | None = None
            ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Top-k actions with probabilities per image, and the files skipped with the reason."""
    device = device or torch.device("cpu")
    model.eval().to(device)
    augment = DeviceAugment.for_eval(meta)
    names = meta["class_names"]
    k = min(top_k, len(names))
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        images = torch.from_numpy(np.stack([array for _, array in batch])).to(device)
        with autocast(device, autocast_dtype("auto", device)):  # as the evaluate stage
            logits = model(augment.eval(images))
        probabilities = logits.float().softmax(dim=1).cpu()
        best = probabilities.topk(k, dim=1)
        predictions.extend(
            Prediction(str(path), [names[i] for i in indices.tolist()], values.tolist())
            for (path, _), values, indices in zip(batch, best.values, best.indices,
                                                  strict=True))
        batch.clear()

    for item in _decoded(files, meta["image_size"], fit, skipped):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return predictions, skipped
