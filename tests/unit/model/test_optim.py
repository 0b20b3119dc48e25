"""The optimiser's groups and schedule: no weight decay on biases, norms and the logit scale,
timm's layer-wise lr decay by the formula, warmup then cosine to zero at the last step."""

from __future__ import annotations

import pytest
import torch

from harclip.model.classifier import build_model
from harclip.model.optim import make_scheduler, parameter_groups
from tests.support.params import train_config


@pytest.mark.parametrize(("name", "block"), [("harclip-tiny-clip", "transformer.resblocks"),
                                             ("harclip-tiny-siglip", "trunk.blocks")])
def test_each_block_gets_the_lr_the_layer_decay_formula_says(name, block):
    """lr × decay^(depth − i) for block i (from 0), the embeddings deeper still, the head and
    everything after the blocks at the full lr; through timm's scheduler too."""
    config = train_config(model=name, layer_decay=0.5, lr=1e-3, epochs=2, warmup_epochs=0.0,
                          head_init="random")
    model, _ = build_model(config)
    groups = parameter_groups(model, 0.1, config.layer_decay)
    scale = {id(p): group["lr_scale"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    depth = 4
    for i in range(depth):
        block_params = [p for n, p in named.items() if f"visual.{block}.{i}." in n]
        assert block_params and {scale[id(p)] for p in block_params} == {0.5 ** (depth - i)}
    stem = "conv1.weight" if "resblocks" in block else "trunk.patch_embed.proj.weight"
    assert scale[id(named[f"clip.visual.{stem}"])] == 0.5 ** (depth + 1)
    assert scale[id(named["head.weight"])] == 1.0
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    make_scheduler(optimizer, config.lr, config.epochs, config.warmup_epochs,
                   steps_per_epoch=10).step_update(0)  # start: lr itself
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in optimizer.param_groups)


def test_no_weight_decay_on_biases_norms_and_logit_scale():
    model, _ = build_model(train_config(model="harclip-tiny-siglip", contrastive_weight=1.0))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"clip.logit_scale", "clip.logit_bias",
                                                          "head.bias"}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_schedule_warms_up_linearly_then_decays_to_zero_at_the_last_step():
    param = torch.nn.Parameter(torch.zeros(1))
    config = train_config(lr=1e-3, epochs=5, warmup_epochs=1.0)
    optimizer = torch.optim.AdamW([param], lr=config.lr)
    scheduler = make_scheduler(optimizer, config.lr, config.epochs, config.warmup_epochs,
                               steps_per_epoch=10)

    def lr_at(step):
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-6)
    assert lr_at(5) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert lr_at(10) == pytest.approx(1e-3)
    assert lr_at(30) == pytest.approx(0.5e-3, rel=1e-3)  # half-way through the cosine
    assert lr_at(49) < 1e-5  # the last of 50 steps
    assert lr_at(49) < lr_at(48) < lr_at(40)
