"""Pretraining the tiny models: a slice of the world lowers the contrastive loss and retrieves
above chance, the shipped checkpoints load as downloaded weights do and know the actions,
and the world is drawn as the demo's images are."""

from __future__ import annotations

from dataclasses import replace

import open_clip
import pytest
import torch

from harclip.config.params import load_params
from harclip.model.backbones import create_backbone, create_tokenizer
from harclip.pretrain.config import load_pretrain_config
from tests.support import REPO_ROOT
from tests.support.params import augment_config, shipped

PRETRAIN_YAML = REPO_ROOT / "models" / "pretrained" / "pretrain.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_pretraining_a_slice_lowers_the_loss_and_retrieves_above_chance(which, tmp_path):
    from harclip.pretrain import stage as pretrain_stage

    shipped_config = load_pretrain_config(PRETRAIN_YAML)
    config = replace(shipped_config,
                     world=replace(shipped_config.world, images=128, held_out=64, draw_size=48,
                                   image_size=32, phrasings=2, seed=0),
                     epochs=30, batch_size=32, lr=1e-3, warmup_epochs=1.0, weight_decay=0.1,
                     augment=augment_config(scale_min=0.35, flip=True), seed=0)
    name = pretrain_stage.MODELS[which]
    tokenizer = create_tokenizer(name)
    images, tokens = pretrain_stage.build_world(config, 128, 0, tokenizer)
    assert images.shape == (128, 3, 32, 32) and tokens.shape == (128, 2, 24)
    torch.manual_seed(0)
    model = create_backbone(name, None, image_size=32)
    history = pretrain_stage.pretrain(model, images, tokens, config, torch.device("cpu"))
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    seen = pretrain_stage.retrieval(model, images[:64], tokens[:64], torch.device("cpu"))
    assert seen["recall_at_5"] > 3 * seen["chance_at_1"] * 5  # captions of images trained on

    # Saved as open_clip loads downloaded weights, at the architecture's own size (open_clip
    # builds a timm tower at its native size before loading, whatever size is forced after).
    model = create_backbone(name, None)
    path = tmp_path / f"{name}.pt"
    pretrain_stage.save(model, path, {"model": name})
    state = open_clip.create_model(name, pretrained=str(path)).state_dict()
    for key, value in model.state_dict().items():
        assert torch.allclose(state[key], value.half().float()), key
    assert path.with_suffix(".json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_the_shipped_checkpoints_load_as_downloaded_weights_and_know_the_actions(which):
    """open_clip's own path for a downloaded file, then the demo's start (its prompts, the
    text head) on a fixed sample of 15 × 12 HAR stand-in images drawn apart from the demo's."""
    from harclip.pretrain import stage as pretrain_stage

    name = pretrain_stage.MODELS[which]
    path = REPO_ROOT / "models" / "pretrained" / f"{name}.pt"
    assert path.stat().st_size < 10_000_000
    loaded = open_clip.create_model(name, pretrained=str(path))
    stored = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(loaded.state_dict()[key], value.float())
               for key, value in stored.items())
    method = {"clip": "clip", "siglip": "sglip"}[which]
    train = load_params(REPO_ROOT / "params.yaml").train(method)
    assert train.pretrained == f"models/pretrained/{name}.pt"
    config = replace(load_pretrain_config(PRETRAIN_YAML), zero_shot_images_per_class=12,
                     zero_shot_seed=2024)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        seen = pretrain_stage.zero_shot(train, config, torch.device("cpu"))
    assert seen["images"] == 180 and seen["accuracy"] > 0.4  # chance: 1/15
    assert seen["shift"]["images"] == 180 and seen["shift"]["accuracy"] > 0.4


def test_a_shipped_fp16_checkpoint_loads_at_another_image_size():
    """open_clip resamples the position embeddings to a forced size, which has no fp16 kernel
    on the CPU: the start is read in float32 first."""
    path = REPO_ROOT / "models" / "pretrained" / "harclip-tiny-clip.pt"
    model = create_backbone("harclip-tiny-clip", str(path), image_size=96)
    assert model.visual.positional_embedding.shape[0] == (96 // 8) ** 2 + 1
    native = create_backbone("harclip-tiny-clip", str(path))
    assert torch.equal(model.visual.conv1.weight, native.visual.conv1.weight)


def test_the_world_config_draws_as_the_demo_does():
    """The world is drawn at the demo's size and cached at its cache size, as the demo's
    images reach the cache."""
    config = load_pretrain_config(PRETRAIN_YAML)
    demo = shipped()
    assert (config.world.draw_size, config.world.image_size) == \
        (demo.download.synthetic.image_size, demo.preprocess.image_size)
    assert replace(config.world, seed=1).seed == 1
