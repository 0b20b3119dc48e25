"""Classifying image files with a trained checkpoint (its own class names): the work behind
`python -m harclip.predict`.

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

from harclip.data.decode import BadImage, decode
from harclip.model.classifier import HarClassifier
from harclip.model.scoring import probabilities
from harclip.model.views import DeviceAugment
from harclip.runtime.devices import autocast_dtype


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


def image_files(inputs: list[Path]) -> list[Path]:
    """The files named, and every file under the directories named, in a stable order."""
    files = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files


@torch.no_grad()
def classify(model: HarClassifier, meta: dict, files: list[Path], top_k: int = 3,
             batch_size: int = 64, fit: str = "crop", device: torch.device | None = None
            ) -> tuple[list[Prediction], list[tuple[Path, str]]]:
    """Top-k actions with probabilities per image, and the files skipped with the reason. The
    probabilities are softmax(logits / T) with the checkpoint's temperature T (fitted on val
    when training published it; 1 for a checkpoint saved before temperatures were)."""
    device = device or torch.device("cpu")
    temperature = meta.get("temperature", 1.0)
    model.eval().to(device)
    augment = DeviceAugment.for_eval(meta)
    names = meta["class_names"]
    k = min(top_k, len(names))
    predictions: list[Prediction] = []
    skipped: list[tuple[Path, str]] = []
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        images = torch.from_numpy(np.stack([array for _, array in batch])).to(device)
        best = probabilities(model, images, augment, autocast_dtype("auto", device),
                             temperature).cpu().topk(k, dim=1)
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
