"""The optimiser's parameter groups and the learning-rate schedule, for fine-tuning and for
pretraining alike: AdamW without weight decay on biases, norms, rank-1 embeddings and the logit
scale and bias, timm's layer-wise lr decay, and timm's cosine schedule with a linear warmup."""

from __future__ import annotations

import torch
from torch import nn

NO_WEIGHT_DECAY_NAMES = ("logit_scale", "logit_bias")


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0
                     ) -> list[dict]:
    """AdamW groups of the trainable parameters: no weight decay on biases, norms, embeddings
    of rank 1 and logit scale/bias; below a layer_decay of 1, timm's layer-wise groups, each
    with its `lr_scale` (which timm's scheduler applies) from the model's group_matcher."""
    if layer_decay < 1.0:
        from timm.optim import param_groups_layer_decay

        return param_groups_layer_decay(model, weight_decay, layer_decay=layer_decay,
                                        no_weight_decay_list=NO_WEIGHT_DECAY_NAMES)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name.endswith(".bias") or \
                any(key in name for key in NO_WEIGHT_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_scheduler(optimizer: torch.optim.Optimizer, lr: float, epochs: int,
                   warmup_epochs: float, steps_per_epoch: int):
    """timm's CosineLRScheduler: linear warmup to `lr`, then cosine decay to zero at the last
    optimiser step."""
    from timm.scheduler import CosineLRScheduler

    total = epochs * steps_per_epoch
    warmup = min(total - 1, round(warmup_epochs * steps_per_epoch))
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=0.0,
                             warmup_t=warmup, warmup_lr_init=lr * 1e-3,
                             warmup_prefix=True, t_in_epochs=False)
