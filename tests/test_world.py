"""The captioned world the tiny models are pretrained on: captions in the parts' words, never
an action's name; every part drawn and said; mostly scenes that are none of the 15 actions;
streams apart from the HAR stand-in's; and contrastive pretraining on a slice of it learns."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch

from harclip.config import load_params
from harclip.har import CLASS_NAMES
from harclip.models import create_backbone, create_tokenizer
from harclip.pretrain import PretrainConfig, WorldConfig
from harclip.synthetic import ACTIONS, ARMS, POSTURES, generate
from harclip.world import (
    ACTION_WORDS,
    ARMS_WORDS,
    BESIDE_WORDS,
    POSTURE_WORDS,
    generate_world,
    sample_scene,
    world_rng,
)
from tests.conftest import REPO_ROOT

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
    and seed, none of the world's images is one of the demo's."""
    digest = lambda image: hashlib.sha256(np.asarray(image).tobytes()).hexdigest()  # noqa: E731
    demo = {digest(image) for _, image in generate(20, 96, seed=0)}
    world = {digest(image) for _, image, _ in generate_world(300, 96, 0, 1, TOKENIZER)}
    assert len(demo) == 300 and len(world) == 300 and not demo & world
    first_draws = (np.random.default_rng(0).random(8), world_rng(0).random(8))
    assert not np.allclose(*first_draws)


def test_the_world_is_deterministic_for_a_seed():
    first, again, other = ([(np.asarray(image), captions) for _, image, captions in
                            generate_world(5, 32, seed, 2, TOKENIZER)] for seed in (3, 3, 4))
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again,
                                                                           strict=True))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_pretraining_a_slice_lowers_the_loss_and_retrieves_above_chance(which, tmp_path):
    from harclip import pretraining

    config = PretrainConfig(world=WorldConfig(images=128, held_out=64, draw_size=48,
                                              image_size=32, phrasings=2),
                            epochs=30, batch_size=32, lr=1e-3, warmup_epochs=1.0)
    name = pretraining.MODELS[which]
    tokenizer = create_tokenizer(name)
    images, tokens = pretraining.build_world(config, 128, 0, tokenizer)
    assert images.shape == (128, 3, 32, 32) and tokens.shape == (128, 2, 24)
    torch.manual_seed(0)
    model = create_backbone(name, None, image_size=32)
    history = pretraining.pretrain(model, images, tokens, config, torch.device("cpu"))
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    seen = pretraining.retrieval(model, images[:64], tokens[:64], torch.device("cpu"))
    assert seen["recall_at_5"] > 3 * seen["chance_at_1"] * 5  # captions of images trained on

    # Saved as open_clip loads downloaded weights, at the architecture's own size (open_clip
    # builds a timm tower at its native size before loading, whatever size is forced after).
    model = create_backbone(name, None)
    path = tmp_path / f"{name}.pt"
    pretraining.save(model, path, {"model": name})
    state = open_clip.create_model(name, pretrained=str(path)).state_dict()
    for key, value in model.state_dict().items():
        assert torch.allclose(state[key], value.half().float()), key
    assert path.with_suffix(".json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_the_shipped_checkpoints_load_as_downloaded_weights_and_know_the_actions(which):
    """open_clip's own path for a downloaded file, then the demo's start (its prompts, the
    text head) on a fixed sample of 15 × 12 HAR stand-in images drawn apart from the demo's."""
    from harclip import pretraining

    name = pretraining.MODELS[which]
    path = REPO_ROOT / "models" / "pretrained" / f"{name}.pt"
    assert path.stat().st_size < 10_000_000
    loaded = open_clip.create_model(name, pretrained=str(path))
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[key], value.float())
               for key, value in stored.items())
    method = {"clip": "clip", "siglip": "sglip"}[which]
    train = load_params(REPO_ROOT / "params.yaml").train(method)
    assert train.pretrained == f"models/pretrained/{name}.pt"
    config = PretrainConfig(zero_shot_images_per_class=12, zero_shot_seed=2024)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        seen = pretraining.zero_shot(train, config, torch.device("cpu"))
    assert seen["images"] == 180 and seen["accuracy"] > 0.4  # chance: 1/15


def test_a_shipped_fp16_checkpoint_loads_at_another_image_size():
    """open_clip resamples the position embeddings to a forced size, which has no fp16 kernel
    on the CPU: the start is read in float32 first."""
    path = REPO_ROOT / "models" / "pretrained" / "harclip-tiny-clip.pt"
    model = create_backbone("harclip-tiny-clip", str(path), image_size=96)
    assert model.visual.positional_embedding.shape[0] == (96 // 8) ** 2 + 1
    native = create_backbone("harclip-tiny-clip", str(path))
    assert torch.equal(model.visual.conv1.weight, native.visual.conv1.weight)


def test_the_world_config_draws_as_the_demo_does():
    defaults = PretrainConfig()
    assert (defaults.world.draw_size, defaults.world.image_size) == (96, 64)  # params.yaml's
    assert replace(defaults.world, seed=1).seed == 1
