"""Objectives: label smoothing as cross-entropy does it, and the image–text term logged apart
from the cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harclip.model.classifier import build_model, class_text_loss
from harclip.model.feed import Batch
from harclip.train import stage as train_stage
from harclip.train.objectives import ContrastiveObjective
from tests.support.params import train_config


def test_label_smoothing_changes_the_loss_as_cross_entropy_does():
    torch.manual_seed(0)
    config = train_config(label_smoothing=0.2, head_init="random")
    model, prompts = build_model(config)
    objective = train_stage.build_objective(config, model, prompts)
    images, labels = torch.randn(6, 3, 64, 64), torch.arange(6)
    model.eval()
    loss, logits, (logged, _) = objective.loss(model, Batch(images, labels))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels,
                                                        label_smoothing=0.2).item())
    assert logged.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert loss.item() != pytest.approx(logged.item())


def test_contrastive_objective_logs_cross_entropy_and_image_text_apart():
    torch.manual_seed(0)
    config = train_config(contrastive_weight=0.5)
    model, prompts = build_model(config)
    objective = train_stage.build_objective(config, model, prompts)
    assert isinstance(objective, ContrastiveObjective)
    images, labels = torch.randn(6, 3, 64, 64), torch.arange(6)
    model.eval()
    loss, logits, (cross_entropy, image_text) = objective.loss(model, Batch(images, labels))
    assert cross_entropy == pytest.approx(F.cross_entropy(logits, labels).item())
    expected = class_text_loss(model.image_features(images), prompts(model.clip), labels,
                               model.clip)
    assert image_text == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx(cross_entropy.item() + 0.5 * image_text.item(),
                                        rel=1e-5)
