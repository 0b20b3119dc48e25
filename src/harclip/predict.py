"""Predict the classes of images with a trained checkpoint (its own class names).

    python -m harclip.predict --model models/sglip.pt photo.jpg folder/ [--top-k 3]
    harclip-predict --model models/clip.pt folder/ --format csv --output predictions.csv

Each image goes through the checkpoint's own preprocessing (its input size and
normalisation); directories are read recursively and scored in batches. A file that is not an
image, or one of more pixels than PIL's limit (a decompression bomb), is reported and skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harclip import stage
from harclip.augment import DeviceAugment
from harclip.engine import autocast, autocast_dtype
from harclip.hardware import resolve_device
from harclip.models import HarClassifier, load_checkpoint
from harclip.preprocess import BadImage, decode


@dataclass
class Prediction:
    path: str
    labels: list[str]
    probabilities: list[float]


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


def render(predictions: list[Prediction], fmt: str) -> str:
    """The predictions as aligned text, CSV (one row per rank) or JSON."""
    if fmt == "json":
        return json.dumps([{"path": p.path, "predictions": [
            {"label": label, "probability": round(prob, 6)}
            for label, prob in zip(p.labels, p.probabilities, strict=True)]}
            for p in predictions], indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(("path", "rank", "label", "probability"))
        for p in predictions:
            writer.writerows((p.path, rank, label, f"{prob:.6f}") for rank, (label, prob)
                             in enumerate(zip(p.labels, p.probabilities, strict=True), 1))
        return buffer.getvalue()
    return "".join(f"{p.path}: " + ", ".join(f"{label} {prob:.1%}" for label, prob in
                                            zip(p.labels, p.probabilities, strict=True)) + "\n"
                   for p in predictions)


def main() -> None:
    cli = argparse.ArgumentParser(description="Predict the classes of images (HAR's actions, or "
                                              "the classes a checkpoint was trained on) with a "
                                              "trained checkpoint (models/<method>.pt).")
    cli.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    cli.add_argument("--model", type=Path, required=True, help="a checkpoint, e.g. "
                     "models/sglip.pt")
    cli.add_argument("--top-k", type=stage.positive_int, default=3,
                     help="classes per image (%(default)s)")
    cli.add_argument("--format", choices=("text", "csv", "json"), default="text")
    cli.add_argument("--output", type=Path, help="write here instead of standard output")
    cli.add_argument("--batch-size", type=stage.positive_int, default=64)
    cli.add_argument("--fit", choices=("crop", "squash"), default="crop",
                     help="how images become square, as preprocess.fit (%(default)s)")
    cli.add_argument("--device", default="auto")
    args = cli.parse_args()

    def run() -> None:
        model, meta = load_checkpoint(args.model)
        predictions, skipped = predict(model, meta, image_files(args.inputs), args.top_k,
                                       args.batch_size, args.fit, resolve_device(args.device))
        for path, reason in skipped:
            stage.log.warning("skipped %s: %s", path, reason)
        text = render(predictions, args.format)
        if args.output:
            args.output.write_text(text)
            stage.log.info("predict: %d images into %s (%d skipped)", len(predictions),
                           args.output, len(skipped))
        else:
            sys.stdout.write(text)

    stage.run(run)


if __name__ == "__main__":
    main()
