"""preprocess stage: decode every image once into memory-mappable uint8 tensors in data/cache.

Training then never decodes a JPEG: it reads `{split}_images.npy` (N×3×S×S uint8) and
`{split}_labels.npy`. The split is stratified by class with a fixed seed, and byte-identical
images (110 groups in real HAR) always land on the same side so validation never leaks into
training. Bad inputs are skipped, counted and listed in `bad_files.csv`; the stage fails only
when more than `max_bad_fraction` of them are bad.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harclip import stage
from harclip.config import PreprocessConfig, load_params
from harclip.har import CLASS_NAMES, IMAGE_DIR, LABELS_CSV, read_labels_csv

CACHE_DIR = Path("data/cache")
RAW_DIR = Path("data/raw")
SPLITS = ("train", "val")
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class BadImage(ValueError):
    """An image file that cannot be used; the message is the reason written to the report."""


@dataclass(frozen=True)
class Candidate:
    """A labelled image file to decode."""

    filename: str
    label: int


@dataclass(frozen=True)
class Rejected:
    """An input that was skipped, and why."""

    filename: str
    reason: str


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit scaled down, transparency composited on white."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int, fit: str) -> Image.Image:
    """Resize to size×size: `crop` keeps the centre square, `squash` keeps everything."""
    if fit == "squash":
        return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)


def decode(data: bytes, size: int, fit: str = "crop") -> np.ndarray:
    """Bytes of any image file to a 3×size×size uint8 array, EXIF orientation applied."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = fit_square(to_rgb(image), size, fit)
    except UnidentifiedImageError as err:
        raise BadImage("not an image file") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage(f"corrupt or truncated image ({err})") from err
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def _decode_file(job: tuple[Path, int, str]) -> tuple[np.ndarray | None, str]:
    """Worker: (array, sha256 of the bytes) or (None, reason)."""
    path, size, fit = job
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, f"unreadable ({err.strerror})"
    try:
        return decode(data, size, fit), hashlib.sha256(data).hexdigest()
    except BadImage as err:
        return None, str(err)


def collect_candidates(raw_dir: Path) -> tuple[list[Candidate], list[Rejected]]:
    """Rows of Training_set.csv that name an existing file with a known label; the rest, why."""
    rows = read_labels_csv(raw_dir / LABELS_CSV)
    image_dir = raw_dir / IMAGE_DIR
    by_name: dict[str, list] = defaultdict(list)
    for row in rows:
        by_name[row.filename].append(row)
    class_ids = {name: index for index, name in enumerate(CLASS_NAMES)}
    candidates, rejected = [], []
    for name, group in by_name.items():
        first, extra = group[0], group[1:]
        if len({row.label for row in group}) > 1:
            lines = ", ".join(str(row.line) for row in group)
            rejected += [Rejected(name, f"listed with conflicting labels (lines {lines})")
                         for _ in group]
            continue
        rejected += [Rejected(name, f"duplicate row at line {row.line} (line {first.line} kept)")
                     for row in extra]
        if first.label not in class_ids:
            rejected.append(Rejected(name, f"unknown label {first.label!r} at line "
                                           f"{first.line}; expected one of the 15 HAR actions"))
        elif not name or not (image_dir / name).is_file():
            rejected.append(Rejected(name, f"listed at line {first.line} but missing from "
                                           f"{IMAGE_DIR}/"))
        else:
            candidates.append(Candidate(name, class_ids[first.label]))
    if image_dir.is_dir():
        listed = set(by_name)
        rejected += [Rejected(path.relative_to(image_dir).as_posix(),
                              f"not listed in {LABELS_CSV} (no label)")
                     for path in sorted(image_dir.rglob("*"))
                     if path.is_file() and path.relative_to(image_dir).as_posix() not in listed]
    return candidates, rejected


def split_train_val(labels: list[int], hashes: list[str], val_fraction: float,
                    seed: int) -> np.ndarray:
    """A boolean is-validation mask: stratified per class, byte-identical files kept together.

    Groups of identical content are shuffled per class with a seeded generator and moved to
    validation while they fit in that class's share, so the result depends only on the inputs.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(hashes):
        groups[digest].append(index)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        majority = Counter(labels[i] for i in members).most_common(1)[0][0]
        by_class[majority].append(members)
    is_val = np.zeros(len(labels), dtype=bool)
    for class_id, class_groups in sorted(by_class.items()):
        class_groups.sort(key=lambda members: members[0])
        rng = np.random.default_rng([seed, class_id])
        order = rng.permutation(len(class_groups))
        target = round(val_fraction * sum(len(g) for g in class_groups))
        taken = 0
        for position in order:
            members = class_groups[position]
            if taken + len(members) <= target:
                is_val[members] = True
                taken += len(members)
    return is_val


def write_report(path: Path, rejected: list[Rejected]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("filename", "reason"))
        writer.writerows((r.filename, r.reason) for r in rejected)


def _summarise(rejected: list[Rejected]) -> str:
    reasons = Counter(r.reason.split(" (")[0].split(" at line")[0] for r in rejected)
    return "; ".join(f"{count} × {reason}" for reason, count in reasons.most_common())


def preprocess(config: PreprocessConfig, raw_dir: Path = RAW_DIR,
               out_dir: Path = CACHE_DIR) -> dict:
    """Decode, split and cache `raw_dir` into `out_dir` atomically; return the summary."""
    candidates, rejected = collect_candidates(raw_dir)
    workers = config.workers or len(os.sched_getaffinity(0))
    jobs = [(raw_dir / IMAGE_DIR / c.filename, config.image_size, config.fit)
            for c in candidates]
    kept: list[tuple[Candidate, np.ndarray, str]] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_decode_file, jobs, chunksize=max(1, min(64, len(jobs) // workers)))
        decoded = stage.progress(zip(candidates, results, strict=True), total=len(jobs),
                                 desc="decoding", unit="img")
        for candidate, (array, detail) in decoded:
            if array is None:
                rejected.append(Rejected(candidate.filename, detail))
            else:
                kept.append((candidate, array, detail))
    total = len(kept) + len(rejected)
    if rejected:
        stage.log.warning("preprocess: skipped %d of %d inputs: %s", len(rejected), total,
                          _summarise(rejected))
    if total == 0 or len(rejected) > config.max_bad_fraction * total:
        examples = "\n  ".join(f"{r.filename}: {r.reason}" for r in rejected[:10])
        raise stage.StageError(
            f"{len(rejected)} of {total} inputs in {raw_dir} are bad, more than "
            f"preprocess.max_bad_fraction = {config.max_bad_fraction}; nothing was written. "
            f"First ones:\n  {examples}")
    labels = [c.label for c, _, _ in kept]
    hashes = [digest for _, _, digest in kept]
    is_val = split_train_val(labels, hashes, config.val_fraction, config.seed)
    summary = {"image_size": config.image_size, "fit": config.fit, "classes": len(CLASS_NAMES),
               "bad_files": len(rejected), "duplicate_groups": _duplicate_groups(hashes)}
    with stage.atomic_directory(out_dir) as staging:
        manifest = []
        for split, mask in zip(SPLITS, (~is_val, is_val), strict=True):
            indices = np.flatnonzero(mask)
            images = np.lib.format.open_memmap(
                staging / f"{split}_images.npy", mode="w+", dtype=np.uint8,
                shape=(len(indices), 3, config.image_size, config.image_size))
            for row, index in enumerate(indices):
                images[row] = kept[index][1]
            images.flush()
            del images
            np.save(staging / f"{split}_labels.npy", np.asarray(
                [labels[i] for i in indices], dtype=np.int64))
            manifest += [(split, row, kept[i][0].filename, CLASS_NAMES[labels[i]], hashes[i])
                         for row, i in enumerate(indices)]
            summary[f"{split}_images"] = len(indices)
        with open(staging / "manifest.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(("split", "index", "filename", "label", "sha256"))
            writer.writerows(manifest)
        write_report(staging / "bad_files.csv", rejected)
        (staging / "classes.json").write_text(json.dumps(list(CLASS_NAMES), indent=2) + "\n")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    stage.log.info("preprocess: %d train + %d val images at %d px into %s (%d bad, listed in "
                   "%s)", summary["train_images"], summary["val_images"], config.image_size,
                   out_dir, len(rejected), out_dir / "bad_files.csv")
    return summary


def _duplicate_groups(hashes: list[str]) -> int:
    return sum(1 for count in Counter(hashes).values() if count > 1)


def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's images (memory-mapped, N×3×S×S uint8) and labels (int64) from the cache."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    images_path = cache_dir / f"{split}_images.npy"
    if not images_path.is_file():
        raise FileNotFoundError(f"{images_path}: cache not found; run `dvc repro preprocess`")
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(cache_dir / f"{split}_labels.npy")
    return images, labels


def main() -> None:
    cli = stage.parser("Decode data/raw once into memory-mappable uint8 tensors, split into "
                       "train/val, and report bad files (data/cache).")
    cli.add_argument("--raw", type=Path, default=RAW_DIR, help="input folder (%(default)s)")
    cli.add_argument("--out", type=Path, default=CACHE_DIR, help="output folder (%(default)s)")
    args = cli.parse_args()
    stage.run(lambda: preprocess(load_params(args.params).preprocess, args.raw, args.out))


if __name__ == "__main__":
    main()
