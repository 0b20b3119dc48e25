"""preprocess stage: decode every image once into memory-mappable uint8 tensors in data/cache.

Training then never decodes a JPEG: it reads `{split}_images.npy` (N×3×S×S uint8) and
`{split}_labels.npy`. The train/val/test split is stratified by class with a fixed seed (or
taken from the CSV's `split` column where the dataset ships one), and byte-identical images
(110 groups in real HAR) always land in the same split, so nothing held out leaks into
training. Bad inputs are skipped, counted and listed in `bad_files.csv`; the stage fails only
when more than `max_bad_fraction` of them are bad.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath

import numpy as np

from harclip import stage
from harclip.cache import CACHE_DIR, SPLITS, CacheItem, write_cache
from harclip.config import PreprocessConfig, load_params
from harclip.decode import Rejected, decode_file, summarise, worker_setup
from harclip.har import (
    CLASSES_JSON,
    IMAGE_DIR,
    LABELS_CSV,
    flag_small_classes,
    read_classes,
    read_labels_csv,
)

RAW_DIR = Path("data/raw")


@dataclass(frozen=True)
class Candidate:
    """A labelled image file to decode: its path under train/, class id and given split."""

    filename: str
    label: int
    split: str = ""


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


def drop_rare_classes(candidates: list[Candidate], classes: list[str], minimum: int
                      ) -> tuple[list[Candidate], list[Rejected], list[str]]:
    """Leave out the classes with fewer than `minimum` candidates (their rows reported as
    `rare_class`), renumbering the rest; flag every class far smaller than the others."""
    files: dict[str, list[str]] = {name: [] for name in classes}
    for candidate in candidates:
        files[classes[candidate.label]].append(candidate.filename)
    flag_small_classes(files, "preprocess", minimum)
    rare = {name for name, names in files.items() if len(names) < minimum}
    if not rare:
        return candidates, [], classes
    kept = [name for name in classes if name not in rare]
    new_id = {classes.index(name): index for index, name in enumerate(kept)}
    rejected = [Rejected(c.filename, "rare_class",
                         f"class {classes[c.label]!r} has {len(files[classes[c.label]])} "
                         f"image(s), fewer than preprocess.min_images_per_class = {minimum}")
                for c in candidates if classes[c.label] in rare]
    return [replace(c, label=new_id[c.label]) for c in candidates if c.label in new_id], \
        rejected, kept


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


def preprocess(config: PreprocessConfig, raw_dir: Path = RAW_DIR,
               out_dir: Path = CACHE_DIR) -> dict:
    """Decode, split and cache `raw_dir` into `out_dir` atomically, one run at a time; return
    the summary."""
    with stage.output_lock(out_dir, "preprocess"):
        return _preprocess(config, raw_dir, out_dir)


def _preprocess(config: PreprocessConfig, raw_dir: Path, out_dir: Path) -> dict:
    candidates, rejected, classes = collect_candidates(raw_dir)
    candidates, rare, classes = drop_rare_classes(candidates, classes,
                                                  config.fewest_images_per_class)
    rejected += rare
    workers = config.workers or len(os.sched_getaffinity(0))
    jobs = [(raw_dir / IMAGE_DIR / c.filename, config.image_size, config.fit,
             config.max_image_pixels) for c in candidates]
    kept: list[tuple[Candidate, CacheItem]] = []
    # multiprocessing's Pool, not ProcessPoolExecutor: leaving its block on an error or a
    # stop terminates the workers at once instead of decoding everything still queued.
    with multiprocessing.Pool(workers, initializer=worker_setup,
                              initargs=(os.getpid(),)) as pool:
        results = pool.imap(decode_file, jobs,
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


def main() -> None:
    cli = stage.parser("Decode data/raw once into memory-mappable uint8 tensors, split into "
                       "train/val/test, and report bad files (data/cache).")
    cli.add_argument("--raw", type=Path, default=RAW_DIR, help="input folder (%(default)s)")
    cli.add_argument("--out", type=Path, default=CACHE_DIR, help="output folder (%(default)s)")
    args = cli.parse_args()
    stage.run(lambda: preprocess(load_params(args.params).preprocess, args.raw, args.out))


if __name__ == "__main__":
    main()
