"""What a fine-tuning run trains, and how: the whole image tower, the head alone, or low-rank
adapters (Hugging Face peft); AdamW's groups (weight decay, layer-wise lr decay through
timm's helper); gradient checkpointing; and the plain weights a checkpoint keeps (adapters
merged), so evaluate, predict and WiSE-FT never see an adapter.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from harclip.config import TrainConfig

NO_WEIGHT_DECAY_NAMES = ("logit_scale", "logit_bias")
LORA_TARGETS = {
    # open_clip's blocks: nn.MultiheadAttention reads out_proj.weight itself, so an adapter on
    # out_proj alone would get no gradient: the attention module is the target (peft adapts
    # its in_proj and out_proj), with the MLP's two Linear layers.
    "open_clip": r".*resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)",
    # timm's blocks (SigLIP's towers): plain Linear layers; not patch_embed.proj (a Conv2d).
    "timm": r".*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)",
}


def apply_tuning(model: nn.Module, config: TrainConfig) -> None:
    """Set what trains (a HarClassifier's parameters' requires_grad) for config.tune, add the
    adapters for `lora` and switch on gradient checkpointing. The text tower trains only with
    `full` tuning and an image–text term (it then has a loss that reaches it)."""
    visual, head = model.clip.visual, model.head
    if config.tune == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        kind = "timm" if hasattr(visual, "trunk") else "open_clip"
        inject_adapter_in_model(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                           target_modules=LORA_TARGETS[kind]), visual)
    trains_visual = config.tune == "full"
    trains_text = config.tune == "full" and bool(config.contrastive_weight)
    visual_ids = {id(p) for p in visual.parameters()}
    head_ids = {id(p) for p in head.parameters()}
    for name, param in model.named_parameters():
        if id(param) in head_ids:
            param.requires_grad_(True)
        elif id(param) in visual_ids:
            param.requires_grad_(trains_visual or "lora_" in name)
        else:  # the text tower, logit scale and bias
            param.requires_grad_(trains_text)
    if config.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)


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


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as the architecture without adapters holds them: a copy in which
    every LoRA layer, outermost first, is merged into its base layer and replaced by it (the
    model itself is left as it is); the state dict itself where there are no adapters."""
    if not any("lora_" in name for name, _ in model.named_parameters()):
        return model.state_dict()
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(model)
    while layer := next(((name, module) for name, module in merged.named_modules()
                         if isinstance(module, BaseTunerLayer)), None):
        name, module = layer
        if hasattr(module, "unload_and_optionally_merge_module"):  # peft's attention layer
            plain = module.unload_and_optionally_merge_module(True, False, None)
        else:
            module.merge()
            plain = module.get_base_layer()
        parent, _, attribute = name.rpartition(".")
        setattr(merged.get_submodule(parent), attribute, plain)
    return merged.state_dict()
