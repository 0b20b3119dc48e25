"""The HAR stand-in: deterministic for a seed, its mean colour says nothing of the class, and
its shifted split is another palette, of other scenes."""

from __future__ import annotations

import copy
import csv

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from harclip.data.cache import load_split
from harclip.data.layout import CLASS_NAMES
from harclip.data.synthetic.scenes import (
    SHIFTED_HUES,
    STAND_IN_HUES,
    draw,
    generate,
    generate_shifted,
    render,
)
from harclip.pretrain.world import sample_scene, world_rng
from tests.support.images import NEAR_DUPLICATE, edge_fingerprint


def _arrays(images):
    return np.stack([np.asarray(image) for _, image in images])


def _mean_rgb_probe(features, labels):
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=5000))
    return cross_val_score(probe, features, labels, cv=5).mean()


def test_generator_is_deterministic_for_a_seed_and_differs_across_seeds():
    first, again, other = (list(generate(2, 48, seed)) for seed in (7, 7, 8))
    assert [label for label, _ in first] == [label for label, _ in again]
    assert np.array_equal(_arrays(first), _arrays(again))
    assert not np.array_equal(_arrays(first), _arrays(other))


def test_mean_colour_says_nothing_about_the_class():
    images = list(generate(40, 48, seed=1))
    labels = np.array([CLASS_NAMES.index(label) for label, _ in images])
    mean_rgb = _arrays(images).reshape(len(images), -1, 3).mean(axis=1) / 255.0
    assert _mean_rgb_probe(mean_rgb, labels) <= 0.15

    # The probe is not blind: had half of each image a colour fixed per class (a bed always
    # drawn in one colour, say), it would read the class well above the 15 % bar.
    class_colour = np.random.default_rng(0).uniform(0, 1, (len(CLASS_NAMES), 3))
    leaky = 0.5 * mean_rgb + 0.5 * class_colour[labels]
    assert _mean_rgb_probe(leaky, labels) > 0.3


# --- the shifted split: the same actions in the other half of the colour wheel ------------

def _cool_share(image) -> float:
    """The share of an image's colourful pixels (HSV saturation over 0.25) whose hue lies in
    the shifted palette's half of the wheel."""
    hsv = np.asarray(image.convert("HSV"), dtype=float) / 255
    hues = hsv[..., 0][hsv[..., 1] > 0.25]
    return float(((hues >= SHIFTED_HUES[0]) & (hues < SHIFTED_HUES[1])).mean())


def test_the_shifted_split_is_drawn_in_a_palette_the_stand_in_never_uses():
    stand_in = [_cool_share(image) for _, image in generate(10, 48, seed=0)]
    shifted = [_cool_share(image) for _, image in generate_shifted(10, 48, seed=0)]
    assert np.mean(stand_in) < 0.03 and np.mean(shifted) > 0.95
    assert max(stand_in) < min(shifted)  # every image, not only on average
    # the pretraining world draws from the whole wheel: it holds both palettes
    rng = world_rng(0)
    world = [_cool_share(draw(sample_scene(rng), 48, rng)) for _ in range(60)]
    assert 0.3 < np.mean(world) < 0.7 and min(world) < 0.1 and max(world) > 0.9


def test_no_shifted_image_is_in_train_byte_for_byte_or_nearly(small_cache):
    rows = list(csv.DictReader((small_cache / "manifest.csv").read_text().splitlines()))
    digests = {side: {r["sha256"] for r in rows if r["split"] == side}
               for side in ("train", "shift")}
    assert len(digests["shift"]) == 60 and not digests["shift"] & digests["train"]
    train, shifted = (np.stack([edge_fingerprint(image.transpose(1, 2, 0)) for image in
                                load_split(small_cache, side)[0]]) for side in ("train", "shift"))
    assert (shifted @ train.T).max() < NEAR_DUPLICATE

    # The check is not blind: the same scene redrawn in the shifted palette (palettes draw the
    # same random numbers, so one generator state gives one drawing) is caught.
    for index, label in enumerate(CLASS_NAMES):
        rng = np.random.default_rng(index)
        same_state = copy.deepcopy(rng)
        warm, cool = (np.asarray(render(label, 64, generator, hues)) for generator, hues in
                      ((rng, STAND_IN_HUES), (same_state, SHIFTED_HUES)))
        assert not np.array_equal(warm, cool)
        assert edge_fingerprint(warm) @ edge_fingerprint(cool) > NEAR_DUPLICATE
