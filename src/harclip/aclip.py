"""A-CLIP (Yang et al., ICCV 2023): attentive token masking with an EMA teacher, dual loss.

An EMA copy of the image tower scores each patch by the attention its [CLS] token pays to
it, averaged over heads and layers, on the un-masked view. The student image tower then sees
only the top-scoring patch tokens plus [CLS] (after positional embeddings), so its cost really
drops. The loss is cross-entropy on the class head plus λ × CLIP's image–text contrastive
loss against the class-prompt embeddings. Evaluation always uses all tokens.

With `saliency: cached`, saliency is computed once per image every `refresh_epochs` on the
whole-image view and warped with each crop's geometry, which removes the per-step teacher pass.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harclip.config import AclipConfig
from harclip.distributed import ALONE, World
from harclip.engine import Batch, CachedSplit, ContrastiveObjective
from harclip.models import PromptEncoder, is_siglip
from harclip.stage import StageError


def cls_attention_row(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention from [CLS] to every token in one open_clip block, averaged over heads (B×T).

    Only the [CLS] query is formed, so this costs O(T) per layer instead of the O(T²) of a
    full attention map.
    """
    attn: nn.MultiheadAttention = block.attn
    batch, tokens, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    normed = block.ln_1(x)
    w_q, w_k, _ = attn.in_proj_weight.chunk(3)
    b_q, b_k, _ = attn.in_proj_bias.chunk(3)
    query = F.linear(normed[:, :1], w_q, b_q).view(batch, 1, heads, head_dim).transpose(1, 2)
    keys = F.linear(normed, w_k, b_k).view(batch, tokens, heads, head_dim).transpose(1, 2)
    weights = (query @ keys.transpose(-1, -2) * head_dim**-0.5).softmax(dim=-1)
    return weights.mean(dim=1)[:, 0]


@torch.no_grad()
def patch_saliency(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[CLS]→patch attention averaged over heads and all layers (B×N patches)."""
    x = visual._embeds(images)
    total = torch.zeros(x.shape[0], x.shape[1], device=x.device, dtype=torch.float32)
    blocks = visual.transformer.resblocks
    for block in blocks:
        total += cls_attention_row(block, x).float()
        x = block(x)
    return total[:, 1:] / len(blocks)


def select_tokens(saliency: torch.Tensor, keep_ratio: float, grid: int,
                  blocks: bool) -> torch.Tensor:
    """Indices (B×K, ascending) of the patch tokens to keep: the most salient ones.

    In block mode the grid is scored in 2×2 blocks (the official code's granularity) and
    whole blocks are kept.
    """
    batch = saliency.shape[0]
    if not blocks:
        keep = max(1, round(keep_ratio * saliency.shape[1]))
        return saliency.topk(keep, dim=1).indices.sort(dim=1).values
    half = grid // 2
    block_scores = F.avg_pool2d(saliency.view(batch, 1, grid, grid), 2).view(batch, -1)
    keep = max(1, round(keep_ratio * half * half))
    top = block_scores.topk(keep, dim=1).indices  # block ids on the half-size grid
    rows, cols = (top // half) * 2, (top % half) * 2
    offsets = torch.tensor([0, 1, grid, grid + 1], device=saliency.device)
    patches = (rows * grid + cols).unsqueeze(-1) + offsets
    return patches.view(batch, -1).sort(dim=1).values


class KeepTokens(nn.Module):
    """Stands in for open_clip's patch_dropout: keeps [CLS] and the chosen patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.keep: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.keep is None:
            return x
        index = self.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return torch.cat([x[:, :1], x[:, 1:].gather(1, index)], dim=1)


def install_token_selection(visual: nn.Module) -> KeepTokens:
    """Put a KeepTokens where open_clip applies patch dropout (after positional embeddings)."""
    if not hasattr(visual, "patch_dropout") or not hasattr(visual, "class_embedding"):
        raise StageError("A-CLIP needs an open_clip ViT image tower with a [CLS] token "
                         "(e.g. ViT-B-16-quickgelu or harclip-tiny-clip)")
    selector = KeepTokens()
    visual.patch_dropout = selector
    return selector


@contextlib.contextmanager
def keeping(selector: KeepTokens, keep: torch.Tensor) -> Iterator[None]:
    selector.keep = keep
    try:
        yield
    finally:
        selector.keep = None


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """EMA momentum rising from `base` to 1 on a cosine schedule (BYOL, A-CLIP)."""
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


def patch_grid(visual: nn.Module) -> int:
    grid = visual.grid_size
    return int(grid[0] if isinstance(grid, (tuple, list)) else grid)


class AclipObjective(ContrastiveObjective):
    """Teacher-scored token selection for the student, then CE + λ × CLIP contrastive loss."""

    def __init__(self, model: nn.Module, prompts: PromptEncoder, config: AclipConfig,
                 contrastive_weight: float, world: World = ALONE) -> None:
        super().__init__(prompts, contrastive_weight, is_siglip(model.clip), world)
        visual = self.student = model.clip.visual
        self.selector = install_token_selection(visual)
        self.teacher = copy.deepcopy(visual).requires_grad_(False).eval()
        self.config = config
        self.grid = patch_grid(visual)
        if config.selection == "block" and self.grid % 2:
            raise StageError(f"train_aclip.aclip.selection: block needs an even patch grid; "
                             f"this model has {self.grid}×{self.grid}: use selection: patch")
        self.cached: torch.Tensor | None = None

    def before_epoch(self, epoch: int, split: CachedSplit, augment) -> None:
        """With cached saliency, (re)score every training image every refresh_epochs."""
        if self.config.saliency != "cached" or (epoch - 1) % self.config.refresh_epochs:
            return
        maps = []
        order = torch.arange(len(split))
        for images, _ in split.batches(order, 256):
            maps.append(patch_saliency(self.teacher, augment.eval(images)))
        self.cached = torch.cat(maps).view(-1, 1, self.grid, self.grid)

    def saliency(self, batch: Batch) -> torch.Tensor:
        if self.config.saliency == "teacher":
            return patch_saliency(self.teacher, batch.images)
        # The crop's own affine warp, applied to the whole-image saliency map.
        grid = F.affine_grid(batch.crop, [len(batch.labels), 1, self.grid, self.grid],
                             align_corners=False)
        warped = F.grid_sample(self.cached[batch.index], grid, mode="bilinear",
                               padding_mode="border", align_corners=False)
        return warped.flatten(1)

    def image_features(self, model, batch):
        keep = select_tokens(self.saliency(batch), self.config.keep_ratio, self.grid,
                             self.config.selection == "block")
        with keeping(self.selector, keep):
            return model.image_features(batch.images)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        ema_update(self.teacher, self.student,
                   momentum_at(step, total_steps, self.config.momentum))

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "cached": self.cached}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.cached = state["cached"]
