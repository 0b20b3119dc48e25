"""Image files and data folders fabricated in the real formats: JPEGs, a Kaggle-layout folder,
a folder per class, and the bad-file report preprocess writes."""

from __future__ import annotations

import csv
import io

import numpy as np
from PIL import Image

from harclip.data.layout import CLASS_NAMES, write_classes, write_labels_csv


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small real JPEG with seeded random content."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def class_folders(root, classes, per_class=3, size=(40, 30)):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(jpeg_bytes(1000 * c + i, size))


def kaggle_folder(root, classes, per_class=3, size=(40, 30)):
    (root / "train").mkdir(parents=True)
    rows = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            filename = f"{name}_{i}.jpg"
            (root / "train" / filename).write_bytes(jpeg_bytes(1000 * c + i, size))
            rows.append((filename, name))
    write_labels_csv(root / "Training_set.csv", rows)


def raw_folder(root, per_class=4, classes=CLASS_NAMES[:3]):
    (root / "train").mkdir(parents=True)
    rows = []
    for c, label in enumerate(classes):
        for i in range(per_class):
            name = f"{label}_{i}.jpg"
            (root / "train" / name).write_bytes(jpeg_bytes(100 * c + i))
            rows.append((name, label))
    write_labels_csv(root / "Training_set.csv", rows)
    write_classes(root, list(classes))
    return rows


def rejections(cache, column="reason"):
    with open(cache / "bad_files.csv") as handle:
        return {row["filename"]: row[column] for row in csv.DictReader(handle)}


def edge_fingerprint(image: np.ndarray) -> np.ndarray:
    """A palette-blind fingerprint (HWC uint8 in): the HLS lightness' gradient, 32×32,
    normalised (a dot product of two is their correlation)."""
    lightness = (image.max(axis=-1).astype(float) + image.min(axis=-1)) / 2
    gradient = np.abs(np.diff(lightness, axis=1))[:-1] + np.abs(np.diff(lightness, axis=0))[:, :-1]
    small = np.asarray(Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8))
                       .resize((32, 32), Image.Resampling.BOX), dtype=float).ravel()
    return (small - small.mean()) / (small.std() * np.sqrt(small.size))


NEAR_DUPLICATE = 0.95
"""Edge correlation above which two images are one scene (the same drawing in the other palette
scores over 0.99; two scenes of the demo's at most about 0.8)."""
