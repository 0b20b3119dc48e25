"""The train / val / test split: seeded and stratified per class with byte-identical images
on one side, or the one the dataset's CSV gives (a CSV may give only its shifted test set,
the rest left empty for the seeded split)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from harclip.config.schema import PreprocessConfig
from harclip.data.cache import IN_DISTRIBUTION, SPLITS
from harclip.data.layout import LABELS_CSV
from harclip.preprocess.inputs import Candidate
from harclip.runtime.log import log


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


def split_source(candidates: list[Candidate]) -> str:
    """summary.json's word for where the train/val/test split came from: the CSV's own (which
    then gives every row one), or seeded."""
    return "given" if any(c.split in IN_DISTRIBUTION for c in candidates) else "seeded"


def choose_splits(config: PreprocessConfig, candidates: list[Candidate],
                  hashes: list[str]) -> np.ndarray:
    """The CSV's own split for each row that gives one, a seeded stratified split for the
    rest; `hashes` are the files' sha256, so both are known before anything is decoded.

    A row left to the seeded split whose bytes a given row has goes where that row is (the
    most held out, of several): a copy of a shifted or test image never trains.
    """
    split_of = np.asarray([SPLITS.index(c.split) if c.split else -1 for c in candidates],
                          dtype=np.int64)
    given: dict[str, int] = {}
    for digest, side in zip(hashes, split_of, strict=True):
        if side >= 0:
            given[digest] = max(given.get(digest, 0), int(side))
    followers = [i for i in np.flatnonzero(split_of < 0) if hashes[i] in given]
    for index in followers:
        split_of[index] = given[hashes[index]]
    if followers:
        log.info("preprocess: %d image(s) without a split in %s are byte-identical to one "
                 "with a split, and go with it", len(followers), LABELS_CSV)
    seeded = np.flatnonzero(split_of < 0)
    if len(seeded):
        split_of[seeded] = assign_splits([candidates[i].label for i in seeded],
                                         [hashes[i] for i in seeded], config.val_fraction,
                                         config.test_fraction, config.seed)
    sides: dict[str, set] = defaultdict(set)
    for digest, side in zip(hashes, split_of, strict=True):
        sides[digest].add(int(side))
    straddling = sum(1 for s in sides.values() if len(s) > 1)
    if straddling:
        log.warning("preprocess: %d byte-identical images sit in more than one of the "
                    "given splits", straddling)
    return split_of
