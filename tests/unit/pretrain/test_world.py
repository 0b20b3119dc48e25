"""The captioned world the tiny models are pretrained on: captions in the parts' words, never
an action's name; every part drawn and said; mostly scenes that are none of the 15 actions;
streams apart from the HAR stand-in's."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from harclip.data.layout import CLASS_NAMES
from harclip.data.synthetic.scenes import ACTIONS, ARMS, POSTURES, generate, generate_shifted
from harclip.model.backbones import create_tokenizer
from harclip.pretrain.world import (
    ACTION_WORDS,
    ARMS_WORDS,
    BESIDE_WORDS,
    POSTURE_WORDS,
    generate_world,
    sample_scene,
    world_rng,
)
from tests.support.images import NEAR_DUPLICATE, edge_fingerprint

TOKENIZER = create_tokenizer("harclip-tiny-clip")


@pytest.fixture(scope="module")
def scenes():
    rng = world_rng(0)
    return [sample_scene(rng) for _ in range(3000)]


def test_no_caption_names_an_action_and_every_caption_fits_the_context():
    texts = [text for _, _, captions in generate_world(400, 32, 0, 4, TOKENIZER)
             for text in captions]
    assert not [text for text in texts if ACTION_WORDS.search(text)]
    assert all(ACTION_WORDS.search(name.replace("_", " ")) for name in CLASS_NAMES)  # it can
    lengths = (TOKENIZER(texts) != 0).sum(dim=1)
    assert int(lengths.max()) <= 24
    assert len(set(texts)) > 0.5 * len(texts)  # phrasings vary


def test_every_part_is_drawn_and_said(scenes):
    persons = [person for scene in scenes for person in scene.people]
    assert {p.posture for p in persons} == set(POSTURES)
    assert {p.arms for p in persons} == set(ARMS)
    assert {p.mouth for p in persons} == {"closed", "open", "hidden"}
    assert {p.eyes for p in persons} == {"open", "closed"} and any(p.headphones for p in persons)
    assert {len(s.people) for s in scenes} == {1, 2}
    assert {s.together for s in scenes} == {"apart", "punching", "embracing"}
    assert set().union(*(s.objects for s in scenes)) == {"bicycle", "bed", "chair", "table",
                                                         "blanket", "laptop", "plate"}
    # each part has words: the postures (lying on a bed or the floor) and the arms
    assert set(ARMS_WORDS) | {"around"} == set(ARMS)  # "around": the embracing pair's words
    assert {name.split("_")[0] for name in POSTURE_WORDS} == set(POSTURES)
    assert set(BESIDE_WORDS) == {"bicycle", "chair", "table", "bed"}


def test_most_scenes_are_none_of_the_15_actions(scenes):
    actions = set(ACTIONS.values())
    share = sum(scene in actions for scene in scenes) / len(scenes)
    assert share < 0.2  # measured 0.12 over these 3,000
    assert Counter(len(s.people) for s in scenes)[1] > 0.7 * len(scenes)


def test_no_world_image_is_a_demo_image():
    """The world's streams are seeded apart from the HAR stand-in's: at the demo's own size
    and seed, none of the world's scenes is one of the demo's, in either palette (compared by
    a palette-blind fingerprint: the stand-in draws other hues than the world, so bytes alone
    would differ whatever the streams)."""
    world = np.stack([edge_fingerprint(np.asarray(image)) for _, image, _ in
                      generate_world(300, 96, 0, 1, TOKENIZER)])
    demo = np.stack([edge_fingerprint(np.asarray(image)) for drawn in
                     (generate(20, 96, seed=0), generate_shifted(10, 96, seed=0))
                     for _, image in drawn])
    assert len(world) == 300 and len(demo) == 450
    assert (world @ demo.T).max() < NEAR_DUPLICATE
    first_draws = (np.random.default_rng(0).random(8), world_rng(0).random(8))
    assert not np.allclose(*first_draws)


def test_the_world_is_deterministic_for_a_seed():
    first, again, other = ([(np.asarray(image), captions) for _, image, captions in
                            generate_world(5, 32, seed, 2, TOKENIZER)] for seed in (3, 3, 4))
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again,
                                                                           strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


WORLD_FINGERPRINT = "7f8fd5433f623a1c32c7e7d613a514e1e2fd1e5b324735c1dcbe49185892604e"
"""sha256 of the world's first 40 scenes, images and captions (seed 0, 96 px, 4 phrasings),
that the shipped starts were pretrained on."""


def test_the_world_is_still_the_one_the_shipped_starts_learned_from():
    """A change to the pen (a palette, a new nuisance, one more random number drawn) changes
    the world: then the starts must be pretrained again (`make pretrained`) and this
    fingerprint updated with them, or the demo fine-tunes models of another world."""
    digest = hashlib.sha256()
    for _, image, captions in generate_world(40, 96, 0, 4, TOKENIZER):
        digest.update(np.asarray(image).tobytes())
        digest.update("|".join(captions).encode())
    assert digest.hexdigest() == WORLD_FINGERPRINT
