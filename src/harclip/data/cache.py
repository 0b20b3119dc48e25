"""The preprocessed cache in data/cache: writing it atomically, and reading it back checked
against its own summary (training, evaluation and the benchmarks read it; nothing decodes a
JPEG after preprocess)."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harclip.data.decode import Rejected
from harclip.data.layout import CLASSES_JSON
from harclip.runtime.errors import StageError
from harclip.runtime.files import atomic_directory

CACHE_DIR = Path("data/cache")
SPLITS = ("train", "val", "test")
FREE_SPACE_MARGIN = 16 * 2**20
"""Space left free beyond the cache itself, for the rest of the system (logs, DVC's state)."""


def write_report(path: Path, rejected: list[Rejected]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("filename", "kind", "reason"))
        writer.writerows((r.filename, r.kind, r.reason) for r in rejected)


def check_free_space(folder: Path, needed: int) -> None:
    """Fail before writing when `folder`'s file system has less than `needed` bytes free, and
    FREE_SPACE_MARGIN besides (the message counts it): a full disk would otherwise end the
    stage halfway."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + FREE_SPACE_MARGIN:
        images, margin = -(-needed // 2**20), FREE_SPACE_MARGIN // 2**20  # MB, rounded up
        raise StageError(
            f"{folder}: the cache needs {images + margin:,} MB ({images:,} MB of images and "
            f"{margin} MB kept free) but only {free // 2**20:,} MB are free there; free some "
            f"space or lower preprocess.image_size")


@dataclass(frozen=True)
class CacheItem:
    """One decoded image and what the manifest records of it."""

    filename: str
    label: int
    sha256: str
    image: np.ndarray


def _write_images(path: Path, images: Sequence[np.ndarray], size: int) -> None:
    """An .npy of N×3×S×S uint8 written sequentially: a full disk raises ENOSPC here, where a
    memory-mapped write would die of SIGBUS."""
    header = {"descr": "|u1", "fortran_order": False, "shape": (len(images), 3, size, size)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for image in images:
            handle.write(np.ascontiguousarray(image, dtype=np.uint8).data)


def write_cache(out_dir: Path, items: Sequence[CacheItem], split_of: np.ndarray,
                classes: Sequence[str], image_size: int, rejected: Sequence[Rejected] = (),
                **summary) -> dict:
    """Write the cache atomically: per split its images, labels and manifest rows; the class
    names, the bad-file report and a summary that `load_split` checks the arrays against."""
    check_free_space(out_dir.parent, len(items) * (3 * image_size**2 + 8) + 200 * len(items))
    summary = {"image_size": image_size, "classes": len(classes), **summary,
               "bad_files": len(rejected),
               "duplicate_groups": sum(1 for n in Counter(i.sha256 for i in items).values()
                                       if n > 1)}
    with atomic_directory(out_dir) as staging:
        manifest = []
        for index, split in enumerate(SPLITS):
            members = [items[i] for i in np.flatnonzero(split_of == index)]
            summary[f"{split}_images"] = len(members)
            if not members:
                continue
            _write_images(staging / f"{split}_images.npy", [m.image for m in members],
                          image_size)
            np.save(staging / f"{split}_labels.npy",
                    np.asarray([m.label for m in members], dtype=np.int64))
            manifest += [(split, row, m.filename, classes[m.label], m.sha256)
                         for row, m in enumerate(members)]
        with open(staging / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("split", "index", "filename", "label", "sha256"))
            writer.writerows(manifest)
        write_report(staging / "bad_files.csv", list(rejected))
        (staging / CLASSES_JSON).write_text(json.dumps(list(classes), indent=2) + "\n")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_summary(cache_dir: Path) -> dict:
    path = cache_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cache not found; run `dvc repro preprocess`")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise StageError(f"{path}: unreadable ({err}); rebuild the cache with "
                         f"`dvc repro preprocess`") from err


def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's images (memory-mapped, N×3×S×S uint8) and labels (int64) from the cache,
    checked against the cache's summary and class list: a truncated, mismatched or edited
    cache is an error, never a silently wrong accuracy. An empty split (no test split asked
    for) has zero rows, and then no files."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    summary = read_summary(cache_dir)
    count, size = summary.get(f"{split}_images", 0), summary["image_size"]
    images_path, labels_path = (cache_dir / f"{split}_{kind}.npy" for kind in ("images",
                                                                               "labels"))
    rebuild = ("rebuild the cache with `dvc repro preprocess` (or `dvc checkout --force "
               "data/cache`)")
    if not count and not images_path.exists() and not labels_path.exists():
        return np.zeros((0, 3, size, size), np.uint8), np.zeros(0, np.int64)
    try:
        images = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path)
    except (OSError, ValueError) as err:
        raise StageError(f"{images_path.parent}: the {split} split is missing or "
                         f"truncated ({err}); {rebuild}") from err
    if images.shape != (count, 3, size, size) or images.dtype != np.uint8 or \
            labels.shape != (count,):
        raise StageError(
            f"{images_path}: {images.shape} {images.dtype} images and {labels.shape[0]} "
            f"labels, where summary.json says {count} images at {size} px; {rebuild}")
    classes = len(cache_classes(cache_dir))
    outside = labels[(labels < 0) | (labels >= classes)] if labels.dtype.kind in "iu" \
        else labels
    if len(outside):
        raise StageError(f"{labels_path}: labels must be integers from 0 to "
                         f"{classes - 1} ({classes} classes in {CLASSES_JSON}), found "
                         f"{outside[0].item()!r}; {rebuild}")
    return images, labels


def cache_classes(cache_dir: Path) -> list[str]:
    """The class names, in label order, that the cache was written with."""
    path = cache_dir / CLASSES_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `dvc repro preprocess`")
    return json.loads(path.read_text())
