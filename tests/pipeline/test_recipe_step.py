"""The real recipe's architectures (configs/har-recipe.yaml: ViT-B-32, ViT-B-16-SigLIP,
ViT-B-16 for A-CLIP) take a training step on the CPU at batch 2, through each stage's own
model and objective: the paths a GPU run takes, without its weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from harclip.config.params import load_params
from harclip.model.backbones import image_normalisation, model_image_size
from harclip.model.classifier import build_model
from harclip.model.feed import Batch, CachedSplit
from harclip.model.optim import parameter_groups
from harclip.model.views import DeviceAugment
from harclip.train.stage import build_objective
from tests.support import REPO_ROOT
from tests.support.params import offline_tokenizer

pytestmark = pytest.mark.slow


RECIPE = load_params(REPO_ROOT / "configs" / "har-recipe.yaml")


@pytest.mark.parametrize("method", ["clip", "sglip", "aclip"])
def test_har_recipe_architecture_takes_a_training_step_on_cpu(method):
    """Each recipe stage's own model and objective (random init, class-prompt head, the
    image–text term on, A-CLIP's cached saliency and token selection), forward and backward on
    two cached images; one prompt template keeps the text tower's share small."""
    torch.manual_seed(0)
    recipe = RECIPE.train(method)
    config = replace(recipe, pretrained=None, contrastive_weight=0.5,
                     prompt_templates=recipe.prompt_templates[:1])
    model, prompts = build_model(config, tokenizer=offline_tokenizer(config.model))
    objective = build_objective(config, model, prompts)
    size = model_image_size(model.clip)
    augment = DeviceAugment(size, *image_normalisation(model.clip))
    uint8 = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    split = CachedSplit(uint8.numpy(), np.array([0, 7]), torch.device("cpu"))
    objective.before_epoch(1, split, augment)
    crop = augment.crop_params(2, torch.Generator().manual_seed(0), torch.device("cpu"))
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-5)
    loss, logits, terms = objective.loss(model, Batch(augment.warp(uint8, crop), split.labels,
                                                      torch.arange(2), crop))
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 15) and logits.dtype == torch.float32
    assert torch.isfinite(loss) and terms[1] > 0  # the image–text term is on
    assert all(p.grad is not None for p in model.clip.visual.parameters() if p.requires_grad)
