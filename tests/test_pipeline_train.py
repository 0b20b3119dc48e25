"""The HAR recipe's architectures through each training stage's own model and objective."""

import numpy as np
import open_clip
import pytest
import torch
import yaml

from harclip.augment import DeviceAugment
from harclip.config import parse_params
from harclip.feed import Batch, CachedSplit
from harclip.models import build_model, image_normalisation, model_image_size
from harclip.training import build_objective
from harclip.tuning import parameter_groups
from tests.conftest import REPO_ROOT
from tests.dvc_project import tiny_params

pytestmark = pytest.mark.slow


def tiny_training_params() -> dict:
    params = tiny_params()
    params["preprocess"]["image_size"] = 32
    for section in ("train_clip", "train_sglip", "train_aclip"):
        params[section].update(epochs=2, batch_size=16, log_every=1)
    return params


def offline_tokenizer(name: str):
    """open_clip's built-in BPE tokenizer folded into `name`'s text vocabulary: SigLIP's own
    tokenizer is a hub download."""
    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    simple = open_clip.SimpleTokenizer(context_length=text_cfg["context_length"])
    return lambda texts: simple(texts) % text_cfg["vocab_size"]


RECIPE = yaml.safe_load((REPO_ROOT / "configs" / "har-recipe.yaml").read_text())


@pytest.mark.parametrize("method", ["clip", "sglip", "aclip"])
def test_har_recipe_architecture_takes_a_training_step_on_cpu(method):
    """Each recipe stage's own model and objective (random init, class-prompt head, the
    image–text term on, A-CLIP's cached saliency and token selection), forward and backward on
    two cached images; one prompt template keeps the text tower's share small."""
    torch.manual_seed(0)
    section = {**RECIPE[f"train_{method}"], "pretrained": None, "contrastive_weight": 0.5,
               "prompt_templates": RECIPE[f"train_{method}"]["prompt_templates"][:1]}
    config = getattr(parse_params({f"train_{method}": section}), f"train_{method}")
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
