"""The few-shot draw: k images of every class, seeded, nested as k grows; a class with fewer
gives all of its own."""

from __future__ import annotations

import numpy as np

from harclip.train.shots import few_shot_rows

LABELS = np.repeat(np.arange(5), [12, 9, 3, 20, 7])  # classes of unequal size, grouped
SHUFFLED = np.random.default_rng(1).permutation(LABELS)


def test_the_draw_is_stratified_and_seeded():
    rows, short = few_shot_rows(SHUFFLED, 3, seed=0)
    assert short == [] and np.bincount(SHUFFLED[rows]).tolist() == [3] * 5
    assert np.all(np.diff(rows) > 0)  # ascending: the memory-mapped cache reads in order
    assert np.array_equal(rows, few_shot_rows(SHUFFLED, 3, seed=0)[0])
    assert not np.array_equal(rows, few_shot_rows(SHUFFLED, 3, seed=1)[0])


def test_more_shots_than_a_class_holds_take_the_whole_class_and_name_it():
    rows, short = few_shot_rows(LABELS, 8, seed=0)
    assert short == [2, 4]  # classes of 3 and 7; 9 ≥ 8 is not short
    assert np.bincount(LABELS[rows]).tolist() == [8, 8, 3, 8, 7]
    everything, _ = few_shot_rows(LABELS, 100, seed=0)
    assert np.array_equal(everything, np.arange(len(LABELS)))


def test_a_larger_k_adds_images_to_a_smaller_ones_draw():
    for small, large in ((1, 2), (2, 4), (4, 8), (8, 16)):
        assert set(few_shot_rows(SHUFFLED, small, 5)[0]) < set(few_shot_rows(SHUFFLED, large,
                                                                               5)[0])


def test_a_classs_draw_does_not_depend_on_the_other_classes():
    rows, _ = few_shot_rows(LABELS, 2, seed=0)
    fewer = LABELS[LABELS != 3]  # class 3 gone: every other class's images are the same
    kept = np.flatnonzero(LABELS != 3)
    rows_without, _ = few_shot_rows(fewer, 2, seed=0)
    assert set(kept[rows_without]) == set(rows) - set(np.flatnonzero(LABELS == 3))
