"""The preprocessed cache in data/cache: writing it atomically, and reading it back checked
against its own summary (training, evaluation and the benchmarks read it; nothing decodes a
JPEG after preprocess)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from harclip.data.decode import Rejected
from harclip.data.layout import CLASSES_JSON, SHIFT_SPLIT
from harclip.runtime.errors import StageError
from harclip.runtime.files import atomic_directory

CACHE_DIR = Path("data/cache")
IN_DISTRIBUTION = ("train", "val", "test")
SPLITS = (*IN_DISTRIBUTION, SHIFT_SPLIT)
"""Test and shift are held out alike; test is of the training images' distribution, shift of
another one (empty for most data sets). In this order each is more held out than the last."""
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


def cache_bytes(images: int, image_size: int) -> int:
    """Disk space a cache of `images` images takes: the pixels, labels and manifest rows."""
    return images * (3 * image_size**2 + 8) + 200 * images


def _npy_header(count: int, size: int) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (count, 3, size, size)})
    return header.getvalue()


class CacheWriter:
    """The cache's files written while the images arrive, one at a time: each split's images
    are appended to its .npy, so memory holds the labels and manifest rows (a few bytes an
    image) but never the images. Writes are sequential: a full disk raises ENOSPC here, where
    a memory-mapped write would die of SIGBUS.

    `planned` is each split's count as far as it is known before decoding; a split that ends
    with fewer (files that turned out bad) gets its header rewritten by `close`.
    """

    def __init__(self, staging: Path, planned: Sequence[int], image_size: int) -> None:
        self.staging, self.planned, self.size = staging, list(planned), image_size
        self.open_files = contextlib.ExitStack()
        self.files: dict[int, BinaryIO] = {}
        self.labels: list[list[int]] = [[] for _ in SPLITS]
        self.rows: list[list[tuple[str, str]]] = [[] for _ in SPLITS]
        self.hashes: Counter[str] = Counter()

    def _images_path(self, split: int) -> Path:
        return self.staging / f"{SPLITS[split]}_images.npy"

    def add(self, split: int, item: CacheItem) -> None:
        if split not in self.files:
            self.files[split] = self.open_files.enter_context(  # closed with the writer
                open(self._images_path(split), "wb"))  # noqa: SIM115
            self.files[split].write(_npy_header(self.planned[split], self.size))
        if len(self.labels[split]) == self.planned[split]:
            raise ValueError(f"more {SPLITS[split]} images than the {self.planned[split]} "
                             f"planned")
        self.files[split].write(np.ascontiguousarray(item.image, dtype=np.uint8).data)
        self.labels[split].append(item.label)
        self.rows[split].append((item.filename, item.sha256))
        self.hashes[item.sha256] += 1

    def counts(self) -> list[int]:
        return [len(labels) for labels in self.labels]

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *error) -> None:
        self.open_files.close()

    def close(self, classes: Sequence[str], rejected: Sequence[Rejected] = (),
              **summary) -> dict:
        """Finish the images, write labels, manifest, class names, the bad-file report and the
        summary that `load_split` checks the arrays against; return the summary."""
        self.open_files.close()
        summary = {"image_size": self.size, "classes": len(classes), **summary,
                   "bad_files": len(rejected),
                   "duplicate_groups": sum(1 for n in self.hashes.values() if n > 1)}
        manifest = []
        for index, split in enumerate(SPLITS):
            count = summary[f"{split}_images"] = len(self.labels[index])
            if not count:
                self._images_path(index).unlink(missing_ok=True)
                continue
            self._fix_header(index, count)
            np.save(self.staging / f"{split}_labels.npy",
                    np.asarray(self.labels[index], dtype=np.int64))
            manifest += [(split, row, name, classes[label], digest) for row, ((name, digest),
                         label) in enumerate(zip(self.rows[index], self.labels[index],
                                                 strict=True))]
        with open(self.staging / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("split", "index", "filename", "label", "sha256"))
            writer.writerows(manifest)
        write_report(self.staging / "bad_files.csv", list(rejected))
        (self.staging / CLASSES_JSON).write_text(json.dumps(list(classes), indent=2) + "\n")
        (self.staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _fix_header(self, split: int, count: int) -> None:
        """The header states the planned count; where fewer came, state the real one, in
        place: numpy pads a header to a 64-byte boundary with room to spare, so the count's
        digits never change its length (checked, not assumed)."""
        planned, real = (_npy_header(n, self.size) for n in (self.planned[split], count))
        if len(planned) != len(real):
            raise ValueError(f"an .npy header for {count} images is not as long as for "
                             f"{self.planned[split]}")
        with open(self._images_path(split), "r+b") as handle:
            handle.write(real)


def write_cache(out_dir: Path, items: Sequence[CacheItem], split_of: np.ndarray,
                classes: Sequence[str], image_size: int, rejected: Sequence[Rejected] = (),
                **summary) -> dict:
    """Write a cache of decoded `items` atomically (the tests' and benchmarks' way in;
    preprocess streams through a CacheWriter itself)."""
    check_free_space(out_dir.parent, cache_bytes(len(items), image_size))
    planned = [int((split_of == index).sum()) for index in range(len(SPLITS))]
    with atomic_directory(out_dir) as staging, \
            CacheWriter(staging, planned, image_size) as writer:
        for item, split in zip(items, split_of, strict=True):
            writer.add(int(split), item)
        return writer.close(classes, rejected, **summary)


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
