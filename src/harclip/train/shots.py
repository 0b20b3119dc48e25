"""Few-shot training sets: k images of each class, drawn from the cached training split.

The draw is stratified and seeded, and it depends only on the labels, k and the seed: the
same k images of a class whatever the other classes hold, and a larger k's draw contains a
smaller one's (each class's images are taken in one seeded order), so a shots curve adds
images rather than swapping them. Val and test are never touched.
"""

from __future__ import annotations

import numpy as np


def few_shot_rows(labels: np.ndarray, shots: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """The rows of `shots` images per class, in ascending order (a class with fewer gives all
    of its own), and the classes that had fewer than `shots`."""
    rows, short = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < shots:
            short.append(int(label))
        order = np.random.default_rng([seed, int(label)]).permutation(len(members))
        rows.append(members[order[:shots]])
    return np.sort(np.concatenate(rows)), short
