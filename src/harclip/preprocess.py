"""preprocess stage: decode every image once into memory-mappable uint8 tensors in data/cache.

Training then never decodes a JPEG: it reads `{split}_images.npy` (N×3×S×S uint8) and
`{split}_labels.npy`. The train/val/test split is stratified by class with a fixed seed (or
taken from the CSV's `split` column where the dataset ships one), and byte-identical images
(110 groups in real HAR) always land in the same split, so nothing held out leaks into
training. Bad inputs are skipped, counted and listed in `bad_files.csv`; the stage fails only
when more than `max_bad_fraction` of them are bad.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from harclip import stage
from harclip.config import PreprocessConfig, load_params
from harclip.har import CLASSES_JSON, IMAGE_DIR, LABELS_CSV, read_classes, read_labels_csv

CACHE_DIR = Path("data/cache")
RAW_DIR = Path("data/raw")
SPLITS = ("train", "val", "test")
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
DEFAULT_MAX_PIXELS = PreprocessConfig().max_image_pixels
FREE_SPACE_MARGIN = 16 * 2**20


class BadImage(ValueError):
    """An image file that cannot be used; the message is the reason written to the report."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Candidate:
    """A labelled image file to decode: its path under train/, class id and given split."""

    filename: str
    label: int
    split: str = ""


# Why an input is skipped, as a kind the report and the log summary group by.
REJECTION_KINDS = {
    "conflicting_labels": "listed with conflicting labels",
    "duplicate_row": "duplicate row",
    "unknown_label": "unknown label",
    "missing_file": "listed but missing",
    "unlisted_file": "not listed (no label)",
    "unreadable": "unreadable",
    "empty_file": "empty file",
    "not_an_image": "not an image",
    "corrupt_image": "corrupt or truncated image",
    "too_large": "too many pixels",
    "outside_dataset": "outside the dataset folder",
    "ambiguous_name": "ambiguous base name",
    "unknown_split": "unknown split",
}


@dataclass(frozen=True)
class Rejected:
    """An input that was skipped: its kind (a key of REJECTION_KINDS) and the details."""

    filename: str
    kind: str
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


def decode(data: bytes, size: int, fit: str = "crop",
           max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Bytes of any image file to a 3×size×size uint8 array, EXIF orientation applied.

    An image of more than `max_pixels` is refused before its pixels are decoded: a small
    file can hold a huge image (a decompression bomb) that would exhaust the memory.
    """
    if not data:
        raise BadImage("empty_file", "empty file (0 bytes)")
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses at open beyond twice this
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
            width, height = image.size
            if width * height > max_pixels:
                raise Image.DecompressionBombError(f"{width}×{height}")
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = fit_square(to_rgb(image), size, fit)
    except Image.DecompressionBombError as err:
        raise BadImage("too_large", f"too many pixels ({err}; more than "
                                    f"preprocess.max_image_pixels = {max_pixels:,})") from err
    except UnidentifiedImageError as err:
        raise BadImage("not_an_image", "not an image file") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage("corrupt_image", f"corrupt or truncated image ({err})") from err
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def _decode_file(job: tuple[Path, int, str, int]) -> tuple[np.ndarray | None, str, str]:
    """Worker: (array, sha256 of the bytes, "") or (None, rejection kind, reason)."""
    path, size, fit, max_pixels = job
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, "unreadable", f"unreadable ({err.strerror})"
    try:
        return decode(data, size, fit, max_pixels), hashlib.sha256(data).hexdigest(), ""
    except BadImage as err:
        return None, err.kind, str(err)


def _worker_setup(parent: int) -> None:
    """Pool-worker initialiser. Ctrl-C is the stage's to handle (it ends the pool); a worker
    ends by itself once its parent is gone (a SIGKILLed stage would otherwise leave its
    workers blocked forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool's terminate() ends it quietly

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


class _ImageFolder:
    """Resolves a CSV row's filename to a file under train/: relative paths must stay inside;
    absolute paths (from the machine a CSV was written on) are matched by base name."""

    def __init__(self, image_dir: Path) -> None:
        self.root = image_dir.resolve()
        self.files = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*")
                            if p.is_file()) if image_dir.is_dir() else []
        self.by_base: dict[str, list[str]] = defaultdict(list)
        for name in self.files:
            self.by_base[name.rsplit("/", 1)[-1]].append(name)
        self.by_base_name = 0

    def resolve(self, name: str, line: int) -> tuple[str | None, Rejected | None]:
        """(path under train/, None) or (None, why not)."""
        if _WINDOWS_ABSOLUTE.match(name) or name.startswith("/"):
            base = PureWindowsPath(name).name
            matches = self.by_base.get(base, [])
            if len(matches) == 1:
                self.by_base_name += 1
                return matches[0], None
            if matches:
                return None, Rejected(name, "ambiguous_name",
                                      f"absolute path at line {line}; its base name {base!r} "
                                      f"matches {len(matches)} files in {IMAGE_DIR}/")
            return None, Rejected(name, "missing_file",
                                  f"absolute path at line {line}; no file named {base!r} in "
                                  f"{IMAGE_DIR}/")
        if not name:
            return None, Rejected(name, "missing_file", f"no filename at line {line}")
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            return None, Rejected(name, "outside_dataset",
                                  f"line {line} points outside the dataset folder "
                                  f"{IMAGE_DIR}/")
        if not path.is_file():
            return None, Rejected(name, "missing_file", f"listed at line {line} but missing "
                                                        f"from {IMAGE_DIR}/")
        return path.relative_to(self.root).as_posix(), None


def collect_candidates(raw_dir: Path) -> tuple[list[Candidate], list[Rejected], list[str]]:
    """Rows of Training_set.csv that name a file inside train/ with a known label (and split,
    where the CSV gives splits); the rest, why; and the class names."""
    rows = read_labels_csv(raw_dir / LABELS_CSV)
    classes = read_classes(raw_dir, rows)
    class_ids = {name: index for index, name in enumerate(classes)}
    folder = _ImageFolder(raw_dir / IMAGE_DIR)
    given_splits = any(row.split for row in rows)
    rejected: list[Rejected] = []
    by_file: dict[str, list] = defaultdict(list)
    for row in rows:
        path, problem = folder.resolve(row.filename, row.line)
        if problem:
            rejected.append(problem)
        else:
            by_file[path].append(row)
    if folder.by_base_name:
        stage.log.info("preprocess: %d absolute paths in %s found in %s/ by their base name",
                       folder.by_base_name, LABELS_CSV, IMAGE_DIR)
    candidates = []
    for name, group in by_file.items():
        first, extra = group[0], group[1:]
        if len({(row.label, row.split) for row in group}) > 1:
            lines = ", ".join(str(row.line) for row in group)
            rejected += [Rejected(name, "conflicting_labels",
                                  f"listed with conflicting labels or splits (lines {lines})")
                         for _ in group]
            continue
        rejected += [Rejected(name, "duplicate_row",
                              f"duplicate row at line {row.line} (line {first.line} kept)")
                     for row in extra]
        if first.label not in class_ids:
            rejected.append(Rejected(name, "unknown_label",
                                     f"unknown label {first.label!r} at line {first.line}; "
                                     f"expected one of the {len(classes)} classes in "
                                     f"{CLASSES_JSON}"))
        elif given_splits and first.split not in SPLITS:
            rejected.append(Rejected(name, "unknown_split",
                                     f"split {first.split!r} at line {first.line}; expected "
                                     f"one of {', '.join(SPLITS)}"))
        else:
            candidates.append(Candidate(name, class_ids[first.label], first.split))
    listed = set(by_file) | {row.filename for row in rows}
    rejected += [Rejected(name, "unlisted_file", f"not listed in {LABELS_CSV} (no label)")
                 for name in folder.files if name not in listed]
    return candidates, rejected, classes


def assign_splits(labels: Sequence[int], hashes: Sequence[str], val_fraction: float,
                  test_fraction: float, seed: int) -> np.ndarray:
    """Each item's split (an index into SPLITS): stratified per class, byte-identical files
    kept together.

    Groups of identical content are shuffled per class with a seeded generator and given to
    test, then val, while they fit in that class's share; the rest train. The result depends
    only on the inputs.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, digest in enumerate(hashes):
        groups[digest].append(index)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in groups.values():
        majority = Counter(labels[i] for i in members).most_common(1)[0][0]
        by_class[majority].append(members)
    split = np.zeros(len(labels), dtype=np.int64)
    for class_id, class_groups in sorted(by_class.items()):
        class_groups.sort(key=lambda members: members[0])
        rng = np.random.default_rng([seed, class_id])
        size = sum(len(g) for g in class_groups)
        room = {2: round(test_fraction * size), 1: round(val_fraction * size)}
        for position in rng.permutation(len(class_groups)):
            members = class_groups[position]
            side = next((s for s in (2, 1) if len(members) <= room[s]), 0)
            if side:
                room[side] -= len(members)
                split[members] = side
    return split


def write_report(path: Path, rejected: list[Rejected]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("filename", "kind", "reason"))
        writer.writerows((r.filename, r.kind, r.reason) for r in rejected)


def summarise(rejected: list[Rejected]) -> str:
    """One line: how many inputs were skipped of each kind, most frequent first."""
    kinds = Counter(r.kind for r in rejected)
    return "; ".join(f"{count} × {REJECTION_KINDS[kind]}" for kind, count in kinds.most_common())


def check_free_space(folder: Path, needed: int) -> None:
    """Fail before writing when `folder`'s file system has less than `needed` bytes free: a
    full disk would otherwise end the stage halfway."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + FREE_SPACE_MARGIN:
        raise stage.StageError(
            f"{folder}: the cache needs {needed / 2**20:,.0f} MB but only {free / 2**20:,.0f} MB "
            f"are free there; free some space or lower preprocess.image_size")


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
    with stage.atomic_directory(out_dir) as staging:
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


def preprocess(config: PreprocessConfig, raw_dir: Path = RAW_DIR,
               out_dir: Path = CACHE_DIR) -> dict:
    """Decode, split and cache `raw_dir` into `out_dir` atomically; return the summary."""
    candidates, rejected, classes = collect_candidates(raw_dir)
    workers = config.workers or len(os.sched_getaffinity(0))
    jobs = [(raw_dir / IMAGE_DIR / c.filename, config.image_size, config.fit,
             config.max_image_pixels) for c in candidates]
    kept: list[tuple[Candidate, CacheItem]] = []
    # multiprocessing's Pool, not ProcessPoolExecutor: leaving its block on an error or a
    # stop terminates the workers at once instead of decoding everything still queued.
    with multiprocessing.Pool(workers, initializer=_worker_setup,
                              initargs=(os.getpid(),)) as pool:
        results = pool.imap(_decode_file, jobs,
                            chunksize=max(1, min(64, len(jobs) // workers)))
        decoded = stage.progress(zip(candidates, results, strict=True), total=len(jobs),
                                 desc="decoding", unit="img")
        for candidate, (array, detail, reason) in decoded:
            if array is None:
                rejected.append(Rejected(candidate.filename, detail, reason))
            else:
                kept.append((candidate, CacheItem(candidate.filename, candidate.label, detail,
                                                  array)))
    total = len(kept) + len(rejected)
    if rejected:
        stage.log.warning("preprocess: skipped %d of %d inputs: %s", len(rejected), total,
                          summarise(rejected))
    if not kept or len(rejected) > config.max_bad_fraction * total:
        examples = "\n  ".join(f"{r.filename}: {r.reason}" for r in rejected[:10])
        raise stage.StageError(
            f"{len(rejected)} of {total} inputs in {raw_dir} are bad, more than "
            f"preprocess.max_bad_fraction = {config.max_bad_fraction}; nothing was written. "
            f"First ones:\n  {examples}")
    items = [item for _, item in kept]
    split_of = _splits(config, [c for c, _ in kept], items)
    for index in (0, 1):
        if not (split_of == index).any():
            raise stage.StageError(f"{len(items)} usable images leave the {SPLITS[index]} split "
                                   f"empty; training needs train and val images (add images "
                                   f"or change preprocess.val_fraction/test_fraction)")
    summary = write_cache(out_dir, items, split_of, classes, config.image_size, rejected,
                          fit=config.fit, split_source="given" if kept[0][0].split else "seeded")
    counts = " + ".join(f"{summary[f'{s}_images']} {s}" for s in SPLITS)
    stage.log.info("preprocess: %s images of %d classes at %d px into %s (%d bad, listed in "
                   "%s)", counts, len(classes), config.image_size, out_dir, len(rejected),
                   out_dir / "bad_files.csv")
    return summary


def _splits(config: PreprocessConfig, candidates: list[Candidate],
            items: list[CacheItem]) -> np.ndarray:
    """The CSV's own splits where it gives them, else a seeded stratified split."""
    if not candidates[0].split:
        return assign_splits([i.label for i in items], [i.sha256 for i in items],
                             config.val_fraction, config.test_fraction, config.seed)
    split_of = np.asarray([SPLITS.index(c.split) for c in candidates])
    sides: dict[str, set] = defaultdict(set)
    for item, side in zip(items, split_of, strict=True):
        sides[item.sha256].add(int(side))
    straddling = sum(1 for s in sides.values() if len(s) > 1)
    if straddling:
        stage.log.warning("preprocess: %d byte-identical images sit in more than one of the "
                          "given splits", straddling)
    return split_of


def read_summary(cache_dir: Path) -> dict:
    path = cache_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cache not found; run `dvc repro preprocess`")
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise stage.StageError(f"{path}: unreadable ({err}); rebuild the cache with "
                               f"`dvc repro preprocess`") from err


def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's images (memory-mapped, N×3×S×S uint8) and labels (int64) from the cache,
    checked against the cache's summary: a truncated or mismatched cache is an error, never a
    silently wrong accuracy. An empty split (no test split asked for) has zero rows."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    summary = read_summary(cache_dir)
    count, size = summary.get(f"{split}_images", 0), summary["image_size"]
    if not count:
        return np.zeros((0, 3, size, size), np.uint8), np.zeros(0, np.int64)
    images_path, labels_path = (cache_dir / f"{split}_{kind}.npy" for kind in ("images",
                                                                               "labels"))
    rebuild = "rebuild the cache with `dvc repro preprocess` (or `dvc checkout data/cache`)"
    try:
        images = np.load(images_path, mmap_mode="r")
        labels = np.load(labels_path)
    except (OSError, ValueError) as err:
        raise stage.StageError(f"{images_path.parent}: the {split} split is missing or "
                               f"truncated ({err}); {rebuild}") from err
    if images.shape != (count, 3, size, size) or images.dtype != np.uint8 or \
            labels.shape != (count,):
        raise stage.StageError(
            f"{images_path}: {images.shape} {images.dtype} images and {labels.shape[0]} "
            f"labels, where summary.json says {count} images at {size} px; {rebuild}")
    return images, labels


def cache_classes(cache_dir: Path) -> list[str]:
    """The class names, in label order, that the cache was written with."""
    path = cache_dir / CLASSES_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `dvc repro preprocess`")
    return json.loads(path.read_text())


def main() -> None:
    cli = stage.parser("Decode data/raw once into memory-mappable uint8 tensors, split into "
                       "train/val/test, and report bad files (data/cache).")
    cli.add_argument("--raw", type=Path, default=RAW_DIR, help="input folder (%(default)s)")
    cli.add_argument("--out", type=Path, default=CACHE_DIR, help="output folder (%(default)s)")
    args = cli.parse_args()
    stage.run(lambda: preprocess(load_params(args.params).preprocess, args.raw, args.out))


if __name__ == "__main__":
    main()
