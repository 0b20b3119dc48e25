"""What a fine-tuning run trains: the whole image tower, the head alone, or low-rank adapters
(Hugging Face peft); gradient checkpointing; and the plain weights a checkpoint keeps
(adapters merged), so evaluate, predict and WiSE-FT never see an adapter.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

LORA_TARGETS = {
    # open_clip's blocks: nn.MultiheadAttention reads out_proj.weight itself, so an adapter on
    # out_proj alone would get no gradient: the attention module is the target (peft adapts
    # its in_proj and out_proj), with the MLP's two Linear layers.
    "open_clip": r".*resblocks\.\d+\.(attn|mlp\.c_fc|mlp\.c_proj)",
    # timm's blocks (SigLIP's towers): plain Linear layers; not patch_embed.proj (a Conv2d).
    "timm": r".*blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)",
}


def apply_tuning(model: nn.Module, tune: str, *, lora_rank: int, lora_alpha: float,
                 trains_text: bool, grad_checkpointing: bool) -> None:
    """Set what trains (a HarClassifier's parameters' requires_grad): the image tower for
    `full` tuning, its adapters for `lora` (added here), the head always. The text tower
    trains only with `full` tuning and `trains_text` (an image–text term: a loss that reaches
    it)."""
    visual, head = model.clip.visual, model.head
    if tune == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        kind = "timm" if hasattr(visual, "trunk") else "open_clip"
        inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_alpha,
                                           target_modules=LORA_TARGETS[kind]), visual)
    trains_visual = tune == "full"
    trains_text = trains_visual and trains_text
    visual_ids = {id(p) for p in visual.parameters()}
    head_ids = {id(p) for p in head.parameters()}
    for name, param in model.named_parameters():
        if id(param) in head_ids:
            param.requires_grad_(True)
        elif id(param) in visual_ids:
            param.requires_grad_(trains_visual or "lora_" in name)
        else:  # the text tower, logit scale and bias
            param.requires_grad_(trains_text)
    if grad_checkpointing:
        model.clip.set_grad_checkpointing(True)


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
