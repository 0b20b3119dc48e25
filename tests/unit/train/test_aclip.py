"""A-CLIP: saliency from the [CLS] row, token selection, masked forward, EMA teacher, the
cached refresh shared out over processes and run under the run's autocast, and a student
that compiles once."""

from __future__ import annotations

import pytest
import torch

from harclip.model.backbones import create_backbone, image_normalisation
from harclip.model.classifier import build_model
from harclip.model.feed import Batch, CachedSplit
from harclip.model.views import DeviceAugment
from harclip.runtime.errors import StageError
from harclip.train.aclip import (
    AclipObjective,
    block_with_cls_row,
    ema_update,
    install_token_selection,
    keeping,
    kept_count,
    momentum_at,
    patch_saliency,
    select_tokens,
)
from tests.support.params import aclip_config, train_config
from tests.support.runs import make_trainer


@pytest.fixture
def visual():
    torch.manual_seed(0)
    tower = create_backbone("harclip-tiny-clip", None).visual
    return tower.eval()


def _images(n=3):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _objective(saliency="teacher", selection="block", keep_ratio=0.5):
    """A-CLIP's objective on a fresh tiny CLIP: the official code's keep ratio, λ = 1, the
    saliency rescored every epoch."""
    torch.manual_seed(0)
    config = train_config("aclip", contrastive_weight=1.0,
                          aclip=aclip_config(saliency=saliency, selection=selection,
                                             keep_ratio=keep_ratio, refresh_epochs=1))
    model, prompts = build_model(config)
    return model, AclipObjective(model, prompts, config.aclip, config.contrastive_weight)


def _epoch_batch(model, objective, count=4, epoch=1, whole_image_crops=False):
    """A batch as the Trainer makes it (crops, the whole view where asked) after the
    objective's per-epoch work; with `whole_image_crops`, each crop is the whole image,
    mirrored or not."""
    full = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)} if whole_image_crops else {}
    augment = DeviceAugment(64, *image_normalisation(model.clip), **full)
    uint8 = torch.randint(0, 256, (count, 3, 64, 64), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(5))
    split = CachedSplit(uint8.numpy(), (torch.arange(count) % 15).numpy(), torch.device("cpu"))
    objective.before_epoch(epoch, split, augment)
    crop = augment.crop_params(count, torch.Generator().manual_seed(0), uint8.device)
    whole = augment.eval(uint8) if objective.wants_whole_view else None
    return Batch(augment.warp(uint8, crop), split.labels, torch.arange(count), crop, whole)


def _refresh_in_process(rank: int, size: int, store: str, out: dict) -> None:
    """One of `size` processes refreshing the cached saliency of 10 images, 4 at a time."""
    import torch.distributed as dist

    from harclip.runtime.distributed import World
    from harclip.train import aclip

    torch.set_num_threads(1)
    aclip.REFRESH_BATCH = 4
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=size)
    model, objective = _objective("cached")
    scored = []
    objective.score = lambda teacher, images: scored.append(len(images)) or \
        patch_saliency(teacher, images)
    augment = DeviceAugment(64, *image_normalisation(model.clip))
    uint8 = torch.randint(0, 256, (10, 3, 64, 64), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(5))
    split = CachedSplit(uint8.numpy(), (torch.arange(10) % 15).numpy(), torch.device("cpu"))
    objective.before_epoch(1, split, augment, World(rank, size, size, grouped=True))
    out[rank] = (objective.cached, scored)
    dist.destroy_process_group()


CPU = torch.device("cpu")


def test_the_kept_count_is_the_official_codes():
    """microsoft/A-CLIP's get_att_mask keeps int(blocks × ratio) + 1 blocks."""
    assert kept_count(49, 0.5) == 25  # ViT-B/16 at 224 px: 7×7 blocks
    assert kept_count(49, 0.75) == 37
    assert kept_count(16, 0.75) == 13  # the demo's tiny ViT: 4×4 blocks
    assert kept_count(49, 1.0) == 49  # never more than there are
    keep = select_tokens(torch.rand(3, 196), 0.5, 14, blocks=True)
    assert keep.shape == (3, 100) and (keep.diff(dim=1) > 0).all()


def test_patch_selection_keeps_exactly_the_highest_scoring_patches():
    saliency = torch.tensor([[0.1, 0.9, 0.3, 0.8, 0.0, 0.5, 0.2, 0.7, 0.4]])
    keep = select_tokens(saliency, keep_ratio=0.25, grid=3, blocks=False)
    assert keep.tolist() == [[1, 3, 7]]  # int(9 × 0.25) + 1 = 3


def test_block_selection_keeps_whole_2x2_blocks_of_the_highest_mean():
    grid = 4  # four 2×2 blocks: top-left 0, top-right 1, bottom-left 2, bottom-right 3
    saliency = torch.zeros(1, grid, grid)
    saliency[0, :2, 2:] = 1.0  # top-right block
    saliency[0, 2:, :2] = 0.6  # bottom-left block
    saliency[0, 0, 0] = 0.9  # one hot patch in a block whose mean stays low
    keep = select_tokens(saliency.view(1, -1), keep_ratio=0.25, grid=grid, blocks=True)
    assert keep.tolist() == [[2, 3, 6, 7, 8, 9, 12, 13]]  # int(4 × 0.25) + 1 = 2 blocks


def test_selected_forward_keeps_cls_and_sees_only_the_kept_tokens(visual):
    selector = install_token_selection(visual)
    seen = []
    handle = visual.transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    images = _images()
    keep = select_tokens(torch.rand(3, 64), 0.2, 8, blocks=True)
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


def test_one_pass_gives_the_blocks_output_and_its_plain_cls_attention_row(visual):
    """The teacher's block forms q, k and v once: its output is the block's own, and its
    [CLS] row is MultiheadAttention's averaged weights."""
    x = visual._embeds(_images())
    with torch.no_grad():
        for block in visual.transformer.resblocks:
            normed = block.ln_1(x)
            _, weights = block.attn(normed, normed, normed, need_weights=True,
                                    average_attn_weights=True)
            out, row = block_with_cls_row(block, x)
            assert torch.allclose(row, weights[:, 0], atol=1e-6)
            x = block(x)
            assert torch.allclose(out, x, atol=1e-5)


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


@pytest.mark.parametrize("saliency", ["teacher", "cached", "random"])
def test_dual_loss_trains_the_student_on_the_kept_tokens(saliency):
    model, objective = _objective(saliency)
    batch = _epoch_batch(model, objective)
    seen = []
    hook = model.clip.visual.transformer.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[1]))
    loss, logits, _ = objective.loss(model, batch)
    loss.backward()
    assert logits.shape == (4, 15) and torch.isfinite(loss)
    assert seen[-1] == 1 + 36  # the student's pass: [CLS] + 9 of the 16 2×2 blocks
    assert model.clip.visual.conv1.weight.grad is not None
    if saliency == "random":  # nothing reads a teacher: none is built or updated
        assert objective.teacher is None
        objective.after_optimizer_step(1, 10)
    else:
        assert all(p.grad is None for p in objective.teacher.parameters())
    with torch.no_grad():
        assert model(batch.images).shape == (4, 15)  # evaluation: all tokens
    hook.remove()
    assert seen[-1] == 65


def test_a_clip_without_the_image_text_term_trains_on_masking_alone():
    """λ = 0 with a random head builds no text encoder; the step must not need one."""
    torch.manual_seed(0)
    config = train_config("aclip", contrastive_weight=0.0, head_init="random",
                          aclip=aclip_config(saliency="teacher", keep_ratio=0.5))
    model, prompts = build_model(config)
    assert prompts is None
    objective = AclipObjective(model, prompts, config.aclip, config.contrastive_weight)
    loss, _, (cross_entropy, image_text) = objective.loss(model, _epoch_batch(model, objective))
    loss.backward()
    assert loss == cross_entropy and image_text == 0
    assert model.clip.visual.conv1.weight.grad is not None


def test_cached_saliency_follows_each_crops_geometry():
    model, objective = _objective("cached")
    batch = _epoch_batch(model, objective, count=8, whole_image_crops=True)
    warped = objective.saliency(batch)
    maps = objective.cached.view(8, 8, 8)
    mirrored = batch.crop[:, 0, 0] < 0
    assert 0 < mirrored.sum() < 8
    expected = torch.where(mirrored.view(8, 1, 1), maps.flip(-1), maps).view(8, -1)
    assert torch.allclose(warped, expected, atol=1e-5)


def test_the_per_step_teacher_is_a_cache_refreshed_every_step():
    """Both modes score the whole image and warp the map to the crop: with the same teacher
    weights they choose the same tokens, and differ only in how stale the map is."""
    model, teacher_mode = _objective("teacher")
    batch = _epoch_batch(model, teacher_mode, count=6)
    _, cached_mode = _objective("cached")
    cached_mode.teacher.load_state_dict(teacher_mode.teacher.state_dict())
    cached_batch = _epoch_batch(model, cached_mode, count=6)
    assert torch.equal(cached_batch.images, batch.images)
    assert torch.allclose(teacher_mode.saliency(batch), cached_mode.saliency(cached_batch),
                          atol=1e-6)


def test_random_choice_keeps_the_same_count_in_whole_blocks_and_changes_every_epoch():
    model, objective = _objective("random")
    chosen = []
    for epoch in (1, 2):
        batch = _epoch_batch(model, objective, count=6, epoch=epoch)
        keep = select_tokens(objective.saliency(batch), 0.5, 8, blocks=True)
        assert keep.shape == (6, 36)  # as many as attentive choice keeps: 9 blocks of 4
        block_of = (keep // 8 // 2) * 4 + (keep % 8) // 2  # 2×2 block id on the 8×8 grid
        per_block = torch.stack([torch.bincount(b, minlength=16) for b in block_of])
        assert set(per_block.unique().tolist()) == {0, 4}  # whole blocks only
        chosen.append(keep)
    assert not torch.equal(chosen[0], chosen[1])  # a new draw every epoch
    assert len({tuple(k.tolist()) for k in chosen[0]}) > 1  # and per image


def test_keep_ratio_one_trains_on_every_token_without_a_teacher_pass():
    model, objective = _objective("teacher", keep_ratio=1.0)
    assert not objective.wants_whole_view and objective.teacher is None
    batch = _epoch_batch(model, objective)
    seen = []
    model.clip.visual.transformer.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].shape[1]))
    objective.loss(model, batch)
    assert seen == [65]


def test_block_selection_on_an_odd_patch_grid_is_refused():
    model, _ = build_model(train_config("aclip"))
    model.clip.visual.grid_size = (7, 7)
    with pytest.raises(StageError, match="block needs an even patch grid"):
        AclipObjective(model, None, aclip_config(selection="block"), 1.0)


def test_the_cached_refresh_is_shared_out_over_the_processes_and_gathered(tmp_path):
    """Each of 2 processes scores its rows[rank::2] (5 images, in batches of one shape: 4
    and 1 padded to 4) and every process ends with the one-process maps."""
    import torch.multiprocessing as mp

    model, alone = _objective("cached")
    augment = DeviceAugment(64, *image_normalisation(model.clip))
    uint8 = torch.randint(0, 256, (10, 3, 64, 64), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(5))
    alone.before_epoch(1, CachedSplit(uint8.numpy(), (torch.arange(10) % 15).numpy(),
                                      torch.device("cpu")), augment)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_refresh_in_process, args=(2, f"file://{tmp_path}/store", out), nprocs=2)
        results = dict(out)
    for rank in (0, 1):
        cached, scored = results[rank]
        assert scored == [4, 4]  # its 5 images, the last batch padded
        assert torch.allclose(cached, alone.cached, atol=1e-6)


def test_saliency_refresh_runs_under_the_runs_autocast_and_is_timed_apart():
    config = train_config("aclip", epochs=1, batch_size=8, precision="bf16",
                          aclip=aclip_config(saliency="cached"))
    torch.manual_seed(0)
    trainer = make_trainer(config)
    autocast_seen = []
    trainer.objective.teacher.transformer.resblocks[0].ln_1.register_forward_pre_hook(
        lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    record, = trainer.fit()
    assert autocast_seen and all(autocast_seen)
    assert 0 < record.refresh_time_s < record.epoch_time_s
    assert trainer.objective.cached.dtype == torch.float32


def test_aclip_student_compiles_once_whatever_tokens_it_keeps():
    """The student's token selection changes every step; under torch.compile that must not
    recompile or break the graph (aot_eager: the graph capture without the code generation)."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    torch.manual_seed(0)
    config = train_config("aclip", aclip=aclip_config(saliency="teacher", keep_ratio=0.5))
    model, prompts = build_model(config)
    objective = AclipObjective(model, prompts, config.aclip, config.contrastive_weight)
    model.clip.visual.compile(backend="aot_eager")
    model.train()
    identity = torch.eye(2, 3).expand(8, 2, 3)
    for _ in range(4):  # new images each step: new teacher maps, other tokens kept
        images = torch.randn(8, 3, 64, 64)
        loss, _, _ = objective.loss(model, Batch(images, torch.arange(8), torch.arange(8),
                                                 identity, whole=images))
        loss.backward()
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]
    torch._dynamo.reset()
