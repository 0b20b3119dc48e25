"""The preprocess stage's work: decode every image once into memory-mappable uint8 tensors in
data/cache.

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
from pathlib import Path

from harclip.config.schema import PreprocessConfig
from harclip.data.cache import CACHE_DIR, SPLITS, CacheItem, write_cache
from harclip.data.decode import Rejected, decode_file, summarise, worker_setup
from harclip.data.layout import IMAGE_DIR, RAW_DIR
from harclip.preprocess.inputs import Candidate, collect_candidates, drop_rare_classes
from harclip.preprocess.splits import choose_splits
from harclip.runtime.errors import StageError
from harclip.runtime.files import output_lock
from harclip.runtime.log import log, progress


def preprocess(config: PreprocessConfig, raw_dir: Path = RAW_DIR,
               out_dir: Path = CACHE_DIR) -> dict:
    """Decode, split and cache `raw_dir` into `out_dir` atomically, one run at a time; return
    the summary."""
    with output_lock(out_dir, "preprocess"):
        return _preprocess(config, raw_dir, out_dir)


def _preprocess(config: PreprocessConfig, raw_dir: Path, out_dir: Path) -> dict:
    candidates, rejected, classes = collect_candidates(raw_dir)
    candidates, rare, classes = drop_rare_classes(candidates, classes, config)
    rejected += rare
    _need_two_classes(classes, raw_dir)
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
        decoded = progress(zip(candidates, results, strict=True), total=len(jobs),
                           desc="decoding", unit="img")
        for candidate, (array, detail, reason) in decoded:
            if array is None:
                rejected.append(Rejected(candidate.filename, detail, reason))
            else:
                kept.append((candidate, CacheItem(candidate.filename, candidate.label, detail,
                                                  array)))
    total = len(kept) + len(rejected)
    if rejected:
        log.warning("preprocess: skipped %d of %d inputs: %s", len(rejected), total,
                    summarise(rejected))
    if not kept or len(rejected) > config.max_bad_fraction * total:
        examples = "\n  ".join(f"{r.filename}: {r.reason}" for r in rejected[:10])
        raise StageError(
            f"{len(rejected)} of {total} inputs in {raw_dir} are bad, more than "
            f"preprocess.max_bad_fraction = {config.max_bad_fraction}; nothing was written. "
            f"First ones:\n  {examples}")
    items = [item for _, item in kept]
    _need_two_classes(sorted({classes[item.label] for item in items}), raw_dir)
    split_of = choose_splits(config, [c for c, _ in kept], items)
    for index in (0, 1):
        if not (split_of == index).any():
            raise StageError(f"{len(items)} usable images leave the {SPLITS[index]} split "
                             f"empty; training needs train and val images (add images "
                             f"or change preprocess.val_fraction/test_fraction)")
    summary = write_cache(out_dir, items, split_of, classes, config.image_size, rejected,
                          fit=config.fit, split_source="given" if kept[0][0].split else "seeded")
    counts = " + ".join(f"{summary[f'{s}_images']} {s}" for s in SPLITS)
    log.info("preprocess: %s images of %d classes at %d px into %s (%d bad, listed in "
             "%s)", counts, len(classes), config.image_size, out_dir, len(rejected),
             out_dir / "bad_files.csv")
    return summary


def _need_two_classes(classes: list[str], raw_dir: Path) -> None:
    """A classifier needs two classes: one would train and score 1.000 without a word."""
    if len(classes) < 2:
        held = f"only {classes[0]!r}" if classes else "none"
        raise StageError(f"{raw_dir}: a classifier needs at least 2 classes with usable "
                         f"images, and this data set has {held}; add images of other "
                         f"classes (or check download.classes and the bad-file counts above)")
