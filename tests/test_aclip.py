"""A-CLIP: saliency from the [CLS] row, token selection, masked forward, EMA teacher."""

import pytest
import torch

from harclip.aclip import (
    AclipObjective,
    cls_attention_row,
    ema_update,
    install_token_selection,
    keeping,
    momentum_at,
    patch_saliency,
    select_tokens,
)
from harclip.augment import DeviceAugment
from harclip.config import AclipConfig, AclipTrainConfig
from harclip.engine import Batch, CachedSplit
from harclip.models import create_backbone, image_normalisation
from harclip.stage import StageError
from harclip.train import build_model


@pytest.fixture
def visual():
    torch.manual_seed(0)
    tower = create_backbone("harclip-tiny-clip", None).visual
    return tower.eval()


def _images(n=3):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_patch_selection_keeps_exactly_the_highest_scoring_patches():
    saliency = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0, 0.5, 0.2, 0.7, 0.4]])
    keep = select_tokens(saliency, keep_ratio=1 / 3, grid=3, blocks=False)
    assert keep.tolist() == [[1, 3, 7]]


def test_block_selection_keeps_whole_2x2_blocks_of_the_highest_mean():
    grid = 4  # four 2×2 blocks: top-left 0, top-right 1, bottom-left 2, bottom-right 3
    saliency = torch.zeros(1, grid, grid)
    saliency[0, :2, 2:] = 1.0  # top-right block
    saliency[0, 2:, :2] = 0.6  # bottom-left block
    saliency[0, 0, 0] = 0.9  # one hot patch in a block whose mean stays low
    keep = select_tokens(saliency.view(1, -1), keep_ratio=0.5, grid=grid, blocks=True)
    assert keep.tolist() == [[2, 3, 6, 7, 8, 9, 12, 13]]


def test_selected_forward_keeps_cls_and_sees_only_the_kept_tokens(visual):
    selector = install_token_selection(visual)
    seen = []
    handle = visual.transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    images = _images()
    keep = select_tokens(torch.rand(3, 64), 0.25, 8, blocks=True)
    with keeping(selector, keep):
        visual(images)
    visual(images)
    handle.remove()
    masked, full = seen
    assert masked.shape[1] == 1 + 16 and full.shape[1] == 1 + 64
    assert torch.equal(masked[:, 0], full[:, 0])  # [CLS] kept, first
    index = keep.unsqueeze(-1).expand(-1, -1, full.shape[-1])
    assert torch.equal(masked[:, 1:], full[:, 1:].gather(1, index))


def test_keep_ratio_one_is_the_full_forward(visual):
    images = _images()
    with torch.no_grad():
        full = visual(images)
        selector = install_token_selection(visual)
        keep = select_tokens(torch.rand(3, 64), 1.0, 8, blocks=True)
        with keeping(selector, keep):
            masked = visual(images)
    assert keep.shape[1] == 64
    assert torch.allclose(masked, full, atol=1e-6)


def test_cls_row_equals_the_plain_full_attention_row(visual):
    x = visual._embeds(_images())
    with torch.no_grad():
        for block in visual.transformer.resblocks:
            normed = block.ln_1(x)
            _, weights = block.attn(normed, normed, normed, need_weights=True,
                                    average_attn_weights=True)
            assert torch.allclose(cls_attention_row(block, x), weights[:, 0], atol=1e-6)
            x = block(x)


def test_saliency_averages_the_cls_rows_over_all_layers(visual):
    rows = []
    x = visual._embeds(_images())
    with torch.no_grad():
        for block in visual.transformer.resblocks:
            normed = block.ln_1(x)
            rows.append(block.attn(normed, normed, normed, need_weights=True)[1][:, 0, 1:])
            x = block(x)
    expected = torch.stack(rows).mean(dim=0)
    assert torch.allclose(patch_saliency(visual, _images()), expected, atol=1e-6)


def test_momentum_rises_from_base_to_one_on_a_cosine():
    assert momentum_at(0, 100, 0.996) == pytest.approx(0.996)
    assert momentum_at(50, 100, 0.996) == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996) == pytest.approx(1.0)
    assert momentum_at(25, 100, 0.996) < momentum_at(75, 100, 0.996)


def test_ema_update_mixes_teacher_and_student():
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for old, new, source in zip(before, teacher.parameters(), student.parameters(),
                                strict=True):
        assert torch.allclose(new, 0.9 * old + 0.1 * source)


def _objective(saliency="teacher", selection="block"):
    torch.manual_seed(0)
    config = AclipTrainConfig(aclip=AclipConfig(saliency=saliency, selection=selection))
    model, prompts = build_model(config)
    return model, AclipObjective(model, prompts, config.aclip, config.contrastive_weight)


@pytest.mark.parametrize("saliency", ["teacher", "cached"])
def test_dual_loss_trains_the_student_on_half_the_tokens(saliency):
    model, objective = _objective(saliency)
    augment = DeviceAugment(64, *image_normalisation(model.clip))
    uint8 = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    split = CachedSplit(uint8.numpy(), torch.arange(4).numpy(), torch.device("cpu"))
    objective.before_epoch(1, split, augment)
    crop = augment.crop_params(len(uint8), torch.Generator().manual_seed(0), uint8.device)
    views = augment.warp(uint8, crop)
    seen = []
    hook = model.clip.visual.transformer.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[1]))
    loss, logits = objective.loss(model, Batch(views, torch.arange(4), torch.arange(4), crop))
    loss.backward()
    assert logits.shape == (4, 15) and torch.isfinite(loss)
    assert seen[-1] == 1 + 32  # the student's pass: [CLS] + half of the 64 patches
    assert model.clip.visual.conv1.weight.grad is not None
    assert all(p.grad is None for p in objective.teacher.parameters())
    with torch.no_grad():
        assert model(views).shape == (4, 15)  # evaluation: all tokens, nothing selected
    hook.remove()
    assert seen[-1] == 65


def test_cached_saliency_follows_each_crops_geometry():
    model, objective = _objective("cached")
    augment = DeviceAugment(64, *image_normalisation(model.clip), scale=(1.0, 1.0),
                            ratio=(1.0, 1.0))
    uint8 = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    split = CachedSplit(uint8.numpy(), torch.zeros(8, dtype=torch.long).numpy(),
                        torch.device("cpu"))
    objective.before_epoch(1, split, augment)
    crop = augment.crop_params(len(uint8), torch.Generator().manual_seed(0), uint8.device)
    views = augment.warp(uint8, crop)
    warped = objective.saliency(Batch(views, torch.zeros(8), torch.arange(8), crop))
    maps = objective.cached.view(8, 8, 8)
    mirrored = crop[:, 0, 0] < 0
    assert 0 < mirrored.sum() < 8
    expected = torch.where(mirrored.view(8, 1, 1), maps.flip(-1), maps).view(8, -1)
    assert torch.allclose(warped, expected, atol=1e-5)


def test_block_selection_on_an_odd_patch_grid_is_refused():
    model, _ = build_model(AclipTrainConfig())
    model.clip.visual.grid_size = (7, 7)
    with pytest.raises(StageError, match="block needs an even patch grid"):
        AclipObjective(model, None, AclipConfig(selection="block"), 1.0)
