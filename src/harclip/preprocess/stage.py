"""The preprocess stage's work: decode every image once into memory-mappable uint8 tensors in
data/cache, as a stream: the split is chosen from the files' hashes (or the CSV) first, then
each decoded image is appended to its split's file, so memory does not grow with the set.

Training then never decodes a JPEG: it reads `{split}_images.npy` (N×3×S×S uint8) and
`{split}_labels.npy`. The train/val/test split is stratified by class with a fixed seed (or
taken from the CSV's `split` column where the dataset ships one), and byte-identical images
(110 groups in real HAR) always land in the same split, so nothing held out leaks into
training. Bad inputs are skipped, counted and listed in `bad_files.csv`; the stage fails only
when more than `max_bad_fraction` of them are bad. The split is drawn among the readable
files, so an image found corrupt while decoding leaves its place in its split empty: it never
moves another image to another split.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np

from harclip.config.schema import PreprocessConfig
from harclip.data.cache import (
    CACHE_DIR,
    IN_DISTRIBUTION,
    SPLITS,
    CacheItem,
    CacheWriter,
    cache_bytes,
    check_free_space,
)
from harclip.data.decode import Rejected, decode_file, hash_file, summarise, worker_setup
from harclip.data.layout import IMAGE_DIR, RAW_DIR, SHIFT_SPLIT
from harclip.preprocess.inputs import collect_candidates, drop_rare_classes
from harclip.preprocess.splits import choose_splits, split_source
from harclip.runtime.errors import StageError
from harclip.runtime.files import atomic_directory, output_lock
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
    # multiprocessing's Pool, not ProcessPoolExecutor: leaving its block on an error or a
    # stop terminates the workers at once instead of decoding everything still queued.
    with multiprocessing.Pool(workers, initializer=worker_setup,
                              initargs=(os.getpid(),)) as pool:
        hashes = pool.imap(hash_file, [raw_dir / IMAGE_DIR / c.filename for c in candidates],
                           chunksize=64)
        readable = []
        for candidate, (digest, reason) in progress(zip(candidates, hashes, strict=True),
                                                    total=len(candidates), desc="hashing",
                                                    unit="file"):
            if digest is None:
                rejected.append(Rejected(candidate.filename, "unreadable", reason))
            else:
                readable.append((candidate, digest))
        if not readable:
            _too_many_bad(rejected, 0, config, raw_dir)
        candidates = [candidate for candidate, _ in readable]
        split_of = choose_splits(config, candidates, [digest for _, digest in readable])
        _need_train_and_val(split_of, len(candidates))
        check_free_space(out_dir.parent, cache_bytes(len(candidates), config.image_size))
        planned = [int((split_of == index).sum()) for index in range(len(SPLITS))]
        with atomic_directory(out_dir) as staging, \
                CacheWriter(staging, planned, config.image_size) as writer:
            jobs = [(raw_dir / IMAGE_DIR / c.filename, config.image_size, config.fit,
                     config.max_image_pixels) for c in candidates]
            decoded = progress(zip(candidates, split_of, _decode(pool, jobs, workers),
                                   strict=True), total=len(jobs), desc="decoding", unit="img")
            for candidate, split, (array, detail, reason) in decoded:
                if array is None:
                    rejected.append(Rejected(candidate.filename, detail, reason))
                else:
                    writer.add(int(split), CacheItem(candidate.filename, candidate.label,
                                                     detail, array))
            kept = sum(writer.counts())
            if rejected:
                log.warning("preprocess: skipped %d of %d inputs: %s", len(rejected),
                            kept + len(rejected), summarise(rejected))
            if not kept or len(rejected) > config.max_bad_fraction * (kept + len(rejected)):
                _too_many_bad(rejected, kept, config, raw_dir)
            labels = {label for split in writer.labels[:len(IN_DISTRIBUTION)]
                      for label in split}  # shift images train nothing
            _need_two_classes(sorted(classes[label] for label in labels), raw_dir)
            _need_train_and_val(np.repeat(np.arange(len(SPLITS)), writer.counts()), kept)
            summary = writer.close(classes, rejected, fit=config.fit,
                                   split_source=split_source(candidates))
    counts = " + ".join(f"{summary[f'{s}_images']} {s}" for s in SPLITS
                        if s != SHIFT_SPLIT or summary[f"{s}_images"])
    log.info("preprocess: %s images of %d classes at %d px into %s (%d bad, listed in "
             "%s)", counts, len(classes), config.image_size, out_dir, len(rejected),
             out_dir / "bad_files.csv")
    return summary


DECODE_WINDOW = 256
"""Images handed to the workers at a time; two windows in flight bound what waits in memory
(about 77 MB at 224 px) however many images the set holds."""


def _decode(pool: multiprocessing.pool.Pool, jobs: list, workers: int) -> Iterator[tuple]:
    """decode_file's results in the order of `jobs`, never more than two windows ahead of the
    writer: Pool.imap alone would queue every decoded image while the writer waits on the
    disk."""
    in_flight: deque = deque()
    for start in range(0, len(jobs), DECODE_WINDOW):
        window = jobs[start:start + DECODE_WINDOW]
        in_flight.append(pool.imap(decode_file, window,
                                   chunksize=max(1, min(16, len(window) // (4 * workers)))))
        if len(in_flight) == 2:
            yield from in_flight.popleft()
    while in_flight:
        yield from in_flight.popleft()


def _too_many_bad(rejected: list[Rejected], kept: int, config: PreprocessConfig,
                  raw_dir: Path) -> NoReturn:
    total = kept + len(rejected)
    examples = "\n  ".join(f"{r.filename}: {r.reason}" for r in rejected[:10])
    raise StageError(
        f"{len(rejected)} of {total} inputs in {raw_dir} are bad, more than "
        f"preprocess.max_bad_fraction = {config.max_bad_fraction}; nothing was written. "
        f"First ones:\n  {examples}")


def _need_train_and_val(split_of: np.ndarray, images: int) -> None:
    for index in (0, 1):
        if not (split_of == index).any():
            raise StageError(f"{images} usable images leave the {SPLITS[index]} split "
                             f"empty; training needs train and val images (add images "
                             f"or change preprocess.val_fraction/test_fraction)")


def _need_two_classes(classes: list[str], raw_dir: Path) -> None:
    """A classifier needs two classes: one would train and score 1.000 without a word."""
    if len(classes) < 2:
        held = f"only {classes[0]!r}" if classes else "none"
        raise StageError(f"{raw_dir}: a classifier needs at least 2 classes with usable "
                         f"images, and this data set has {held}; add images of other "
                         f"classes (or check download.classes and the bad-file counts above)")
