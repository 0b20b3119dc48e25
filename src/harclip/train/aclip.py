"""A-CLIP (Yang et al., ICCV 2023): attentive token masking with an EMA teacher, dual loss.

An EMA copy of the image tower scores each patch by the attention its [CLS] token pays to
it, averaged over heads and layers, on the whole image; the map is warped to the student's
crop. The student image tower then sees only the top-scoring patch tokens plus [CLS] (after
positional embeddings), so its cost really drops. The loss is cross-entropy on the class head
plus λ × the class-level image–text term against the class-prompt embeddings. Evaluation
always uses all tokens.

With `saliency: cached`, the maps are computed every `refresh_epochs` instead of every step;
with `saliency: random` the same number of blocks is drawn at random (FLIP, the baseline that
isolates what attentive choice buys); with `keep_ratio: 1.0` every token is kept.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from harclip.config.schema import AclipConfig
from harclip.model.classifier import PromptEncoder
from harclip.model.feed import Batch, CachedSplit, padded
from harclip.runtime.distributed import ALONE, World
from harclip.runtime.errors import StageError
from harclip.train.objectives import ContrastiveObjective


def block_with_cls_row(block: nn.Module, x: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """One open_clip block's output, and the attention from [CLS] to every token averaged
    over heads (B×T), from one layer norm and one q/k/v projection.

    The block's own attention computes the same q and k but keeps no weights; the [CLS] row
    adds one query's scores, O(T) instead of a full map's O(T²).
    """
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention):  # adapters (LoRA): its own full map
        normed = block.ln_1(x)
        attended, weights = attn(normed, normed, normed, need_weights=True,
                                 average_attn_weights=True)
        x = x + block.ls_1(attended)
        return x + block.ls_2(block.mlp(block.ln_2(x))), weights[:, 0]
    batch, tokens, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias) \
        .view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    row = (q[:, :, :1] @ k.transpose(-1, -2) * (width // heads) ** -0.5).softmax(dim=-1)
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
    x = x + block.ls_1(attn.out_proj(attended))
    return x + block.ls_2(block.mlp(block.ln_2(x))), row.mean(dim=1)[:, 0]


@torch.no_grad()
def patch_saliency(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[CLS]→patch attention averaged over heads and all layers (B×N patches)."""
    x = visual._embeds(images)
    total = torch.zeros(x.shape[0], x.shape[1], device=x.device, dtype=torch.float32)
    blocks = visual.transformer.resblocks
    for block in blocks:
        x, row = block_with_cls_row(block, x)
        total += row.float()
    return total[:, 1:] / len(blocks)


REFRESH_BATCH = 256
"""Images per teacher pass in a refresh of the cached saliency (the last batch padded)."""


def kept_count(units: int, keep_ratio: float) -> int:
    """How many of `units` (blocks or patches) are kept: microsoft/A-CLIP's `get_att_mask`
    count, int(units × ratio) + 1 (25 of 49 blocks at 0.5), at most all of them."""
    return min(units, int(units * keep_ratio) + 1)


def select_tokens(saliency: torch.Tensor, keep_ratio: float, grid: int,
                  blocks: bool) -> torch.Tensor:
    """Indices (B×K, ascending) of the patch tokens to keep: the most salient ones.

    In block mode the grid is scored in 2×2 blocks (the official code's granularity) and
    whole blocks are kept; `kept_count` says how many.
    """
    batch = saliency.shape[0]
    if not blocks:
        return saliency.topk(kept_count(saliency.shape[1], keep_ratio), dim=1).indices \
            .sort(dim=1).values
    half = grid // 2
    block_scores = F.avg_pool2d(saliency.view(batch, 1, grid, grid), 2).view(batch, -1)
    top = block_scores.topk(kept_count(half * half, keep_ratio), dim=1).indices
    rows, cols = (top // half) * 2, (top % half) * 2
    # A block's four patches; built on the device (a host tensor would be a blocking copy).
    corner = torch.arange(2, device=saliency.device)
    offsets = (corner.view(2, 1) * grid + corner).view(-1)
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
    """teacher ← momentum · teacher + (1 − momentum) · student, in one fused pass."""
    torch._foreach_lerp_(list(teacher.parameters()),
                         [p.detach() for p in student.parameters()], 1.0 - momentum)


def patch_grid(visual: nn.Module) -> int:
    grid = visual.grid_size
    return int(grid[0] if isinstance(grid, (tuple, list)) else grid)


class AclipObjective(ContrastiveObjective):
    """Token selection for the student, then CE + λ × the class-level image–text term.

    How tokens are chosen (`saliency`) is the only thing that varies between A-CLIP and its
    baselines on the same stage: `teacher` scores the whole image with the EMA teacher every
    step (the official code's teacher sees an enclosing view, not the student's crop) and warps
    the map to the student's crop; `cached` does the same from maps refreshed every
    `refresh_epochs` (so the two differ only in how stale the map is); `random` draws the same
    number of blocks uniformly at random per image and epoch (FLIP). `keep_ratio: 1.0` keeps
    every token: plain full-token fine-tuning.
    """

    def __init__(self, model: nn.Module, prompts: PromptEncoder, config: AclipConfig,
                 contrastive_weight: float, seed: int = 0, label_smoothing: float = 0.0) -> None:
        super().__init__(prompts, contrastive_weight, label_smoothing)
        visual = self.student = model.clip.visual
        self.selector = install_token_selection(visual)
        self.config = config
        self.grid = patch_grid(visual)
        self.blocks = config.selection == "block"
        if self.blocks and self.grid % 2:
            raise StageError(f"train_aclip.aclip.selection: block needs an even patch grid; "
                             f"this model has {self.grid}×{self.grid}: use selection: patch")
        units = (self.grid // 2) ** 2 if self.blocks else self.grid**2
        self.all_tokens = kept_count(units, config.keep_ratio) == units
        self.wants_whole_view = config.saliency == "teacher" and not self.all_tokens
        self.teacher = None if self.all_tokens or config.saliency == "random" else \
            copy.deepcopy(visual).requires_grad_(False).eval()
        """The EMA teacher, where something reads its attention."""
        self.score = patch_saliency
        self.cached: torch.Tensor | None = None
        """Per training image: a saliency map (cached) or random scores (random)."""
        device = next(visual.parameters()).device
        # Apart from the crops' stream (seeded with `seed`), so kept tokens and crops are
        # not drawn from one sequence.
        self.random = torch.Generator(device=device).manual_seed(seed + 1)

    def compile(self) -> None:
        """The teacher's scoring compiled once: it always sees one batch shape (the
        micro-batch per step, REFRESH_BATCH rows per refresh)."""
        self.score = torch.compile(patch_saliency, dynamic=False)

    def before_epoch(self, epoch: int, split: CachedSplit, augment, world: World = ALONE
                     ) -> bool:
        """Cached saliency: (re)score every training image every refresh_epochs on its whole
        view, each process its rows[rank::size], then gather the maps. Random choice: draw
        this epoch's scores for every image."""
        if self.all_tokens:
            return False
        if self.config.saliency == "random":
            self.cached = torch.rand(len(split), self.grid**2, generator=self.random,
                                     device=split.device)
            return False
        if self.config.saliency != "cached" or (epoch - 1) % self.config.refresh_epochs:
            return False
        rows = torch.arange(world.rank, len(split), world.size)
        size = min(REFRESH_BATCH, len(rows))  # every batch one shape, the last padded
        maps = [self.score(self.teacher, augment.eval(padded(images, size)))[:len(images)]
                for images, _ in split.batches(rows, size)]
        maps = torch.cat(maps) if maps else torch.zeros(0, self.grid**2, device=split.device)
        self.cached = world.gather_rows(maps, len(split)).view(-1, 1, self.grid, self.grid)
        return True

    def saliency(self, batch: Batch) -> torch.Tensor:
        """Per patch of the student's view, how much to keep it (B×N)."""
        if self.config.saliency == "random":
            return self.cached[batch.index]
        maps = self.cached[batch.index] if self.config.saliency == "cached" else \
            self.score(self.teacher, batch.whole).view(-1, 1, self.grid, self.grid)
        # The crop's own affine warp, applied to the whole-image saliency map.
        grid = F.affine_grid(batch.crop, [len(batch.labels), 1, self.grid, self.grid],
                             align_corners=False)
        warped = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border",
                               align_corners=False)
        return warped.flatten(1)

    def image_features(self, model, batch):
        if self.all_tokens:
            return model.image_features(batch.images)
        keep = select_tokens(self.saliency(batch), self.config.keep_ratio, self.grid,
                             self.blocks)
        with keeping(self.selector, keep):
            return model.image_features(batch.images)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if self.teacher is not None:
            ema_update(self.teacher, self.student,
                       momentum_at(step, total_steps, self.config.momentum))

    def state_dict(self) -> dict:
        return {"teacher": None if self.teacher is None else self.teacher.state_dict(),
                "cached": self.cached, "random": self.random.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        cached = state["cached"]
        self.cached = None if cached is None else \
            cached.to(next(self.student.parameters()).device)
        self.random.set_state(state["random"])
