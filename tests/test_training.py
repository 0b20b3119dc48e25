"""The training engine and models: steps, accumulation, schedule, augmentation, heads, I/O."""

import math

import numpy as np
import open_clip
import pytest
import torch

from harclip.augment import DeviceAugment
from harclip.checkpoints import load_checkpoint, save_checkpoint
from harclip.config import AugmentConfig, TrainConfig
from harclip.engine import (
    TrainingDiverged,
    TrainStep,
    accumulate_gradients,
    make_scheduler,
    train,
)
from harclip.feed import Batch, CachedSplit, effective_batches, steps_per_epoch
from harclip.har import CLASS_NAMES
from harclip.models import (
    build_classifier,
    build_model,
    create_backbone,
    create_tokenizer,
    init_head,
)
from harclip.objectives import ContrastiveObjective, Objective
from harclip.stage import StageError
from harclip.training import build_objective
from harclip.tuning import parameter_groups

TINY = ("harclip-tiny-clip", "harclip-tiny-siglip")


def _batch(n=8, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.arange(n) % len(CLASS_NAMES)
    return images, labels


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("contrastive_weight", [0.0, 0.5])
def test_one_optimiser_step_lowers_the_loss_on_a_fixed_batch(name, contrastive_weight):
    torch.manual_seed(0)
    config = TrainConfig(model=name, contrastive_weight=contrastive_weight)
    model, prompts = build_model(config)
    objective = build_objective(config, model, prompts)
    assert isinstance(objective, ContrastiveObjective) == bool(contrastive_weight)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-4)
    images, labels = _batch()
    model.eval()  # no dropout: the same batch gives the same loss
    before, _, _ = objective.loss(model, Batch(images, labels))
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, _, _ = objective.loss(model, Batch(images, labels))
    assert after.item() < before.item()


def test_text_tower_is_frozen_unless_the_contrastive_term_needs_it():
    ce_only, _ = build_model(TrainConfig(contrastive_weight=0.0))
    dual, _ = build_model(TrainConfig(contrastive_weight=1.0))
    assert not any(p.requires_grad for p in ce_only.clip.transformer.parameters())
    assert all(p.requires_grad for p in ce_only.clip.visual.parameters())
    assert all(p.requires_grad for p in dual.clip.transformer.parameters())


def test_no_weight_decay_on_biases_norms_and_logit_scale():
    model, _ = build_model(TrainConfig(model="harclip-tiny-siglip", contrastive_weight=1.0))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} >= {"clip.logit_scale", "clip.logit_bias",
                                                          "head.bias"}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_accumulating_micro_batches_gives_the_one_batch_gradient():
    torch.manual_seed(0)
    model, _ = build_model(TrainConfig())
    model.eval()
    images, labels = _batch(n=8)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def gradients(micro):
        model.zero_grad()
        chunks = [Batch(images[i:i + micro], labels[i:i + micro]) for i in range(0, 8, micro)]
        loss_sum, correct, finite = accumulate_gradients(TrainStep(model, Objective()), chunks,
                                                         8, scaler, None)
        assert bool(finite) and int(correct) <= 8
        return [p.grad.clone() for p in model.parameters() if p.requires_grad], loss_sum

    whole, whole_loss = gradients(8)
    parts, parts_loss = gradients(2)
    assert torch.allclose(whole_loss, parts_loss, rtol=1e-5)
    for a, b in zip(whole, parts, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("images", "batch", "processes"),
                         [(100, 32, 1), (100, 32, 2), (97, 32, 2), (65, 32, 4), (64, 32, 8)])
def test_every_step_splits_evenly_over_the_processes(images, batch, processes):
    groups = list(effective_batches(torch.arange(images), batch, processes))
    assert len(groups) == steps_per_epoch(images, batch, processes)
    assert all(len(g) % processes == 0 and 0 < len(g) <= batch for g in groups)
    used = torch.cat(groups)
    assert len(set(used.tolist())) == len(used)  # no image twice
    assert images - len(used) < processes  # at most processes - 1 sit out


def test_schedule_warms_up_linearly_then_decays_to_zero_at_the_last_step():
    param = torch.nn.Parameter(torch.zeros(1))
    config = TrainConfig(lr=1e-3, epochs=5, warmup_epochs=1.0)
    optimizer = torch.optim.AdamW([param], lr=config.lr)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch=10)

    def lr_at(step):
        scheduler.step_update(step)
        return optimizer.param_groups[0]["lr"]

    assert lr_at(0) == pytest.approx(1e-6)
    assert lr_at(5) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert lr_at(10) == pytest.approx(1e-3)
    assert lr_at(30) == pytest.approx(0.5e-3, rel=1e-3)  # half-way through the cosine
    assert lr_at(49) < 1e-5  # the last of 50 steps
    assert lr_at(49) < lr_at(48) < lr_at(40)


def _augment(**kwargs):
    return DeviceAugment(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), **kwargs)


def _train_view(augment, images, seed):
    theta = augment.crop_params(len(images), torch.Generator().manual_seed(seed), images.device)
    return augment.warp(images, theta), theta


def test_augmentation_crops_differ_per_sample_and_stay_in_range():
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).repeat(6, 1, 1, 1)
    out, _ = _train_view(_augment(), images, 0)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= (0 - 0.5) / 0.25 - 1e-5 and out.max() <= (1 - 0.5) / 0.25 + 1e-5
    assert len({tuple(sample.flatten()[:20].tolist()) for sample in out}) == 6


def test_augmentation_is_deterministic_under_a_seed():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    first, _ = _train_view(_augment(), images, 3)
    again, _ = _train_view(_augment(), images, 3)
    other, _ = _train_view(_augment(), images, 4)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_flip_really_mirrors_and_a_full_crop_is_the_image_itself():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    full = _augment(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    out, theta = _train_view(full, images, 0)
    mirrored = theta[:, 0, 0] < 0
    assert 0 < mirrored.sum() < 32
    plain = full.eval(images)
    assert torch.allclose(out[~mirrored], plain[~mirrored], atol=1e-5)
    assert torch.allclose(out[mirrored], plain[mirrored].flip(-1), atol=1e-5)


def test_eval_view_resizes_the_whole_image():
    images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    out = _augment().eval(images)
    assert out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, torch.full_like(out, (1 - 0.5) / 0.25))


@pytest.mark.parametrize("name", TINY)
def test_class_prompt_head_is_open_clips_zero_shot_classifier_times_the_scale(name):
    torch.manual_seed(0)
    templates = ("a photo of a person {}.", "someone {}.")
    model, _ = build_model(TrainConfig(model=name, head_init="text",
                                       prompt_templates=templates))
    reference = open_clip.build_zero_shot_classifier(
        model.clip, create_tokenizer(name),
        [c.replace("_", " ") for c in CLASS_NAMES], templates)
    scale = model.clip.logit_scale.exp()
    assert torch.allclose(model.head.weight, reference.T * scale, atol=1e-5)
    bias = model.clip.logit_bias if name.endswith("siglip") else 0.0
    assert torch.allclose(model.head.bias, torch.full((15,), float(bias)))
    # so the head's logits are the model's own zero-shot logits
    images, _ = _batch(n=2)
    with torch.no_grad():
        features = model.clip.encode_image(images, normalize=True)
        expected = scale * features @ reference + bias
        assert torch.allclose(model(images), expected, atol=1e-4)


def test_random_head_has_unit_rows_at_the_logit_scale():
    model = build_classifier("harclip-tiny-clip", None, 15)
    init_head(model, "random")
    norms = model.head.weight.norm(dim=1)
    assert torch.allclose(norms, model.clip.logit_scale.exp().expand(15), rtol=1e-5)


def test_pretrained_from_a_local_checkpoint_file_reproduces_the_outputs(tmp_path):
    torch.manual_seed(1)
    source = create_backbone("harclip-tiny-clip", None)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = create_backbone("harclip-tiny-clip", str(path))
    images, _ = _batch(n=2)
    source.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(source.encode_image(images), loaded.encode_image(images))


def test_unreachable_pretrained_tag_and_missing_file_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(StageError, match="could not fetch pretrained weights 'openai'.*local"):
        create_backbone("ViT-B-32-quickgelu", "openai")
    with pytest.raises(StageError, match="nope.pt: pretrained checkpoint file not found"):
        create_backbone("harclip-tiny-clip", str(tmp_path / "nope.pt"))
    with pytest.raises(StageError, match="unknown model 'ViT-Q-99'"):
        create_backbone("ViT-Q-99", None)


def test_checkpoint_round_trip_and_clear_errors_for_other_files(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model(TrainConfig(model="harclip-tiny-siglip"))
    path = tmp_path / "sglip.pt"
    save_checkpoint(path, model, "harclip-tiny-siglip", CLASS_NAMES, {"epoch": 3})
    loaded, meta = load_checkpoint(path)
    images, _ = _batch(n=2)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(images), loaded(images), atol=1e-6)
    assert meta["class_names"] == list(CLASS_NAMES) and meta["epoch"] == 3
    assert meta["image_size"] == 64 and len(meta["mean"]) == 3

    payload = torch.load(path, weights_only=True)
    payload["version"] = 0
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(StageError, match="old.pt: checkpoint format version 0"):
        load_checkpoint(tmp_path / "old.pt")
    payload["version"] = 1
    payload["model_config"] = {**payload["model_config"], "embed_dim": 64}
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(StageError, match="other.pt: saved for a harclip-tiny-siglip whose "
                                         "architecture differs"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(StageError, match="foreign.pt: not a harclip checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(StageError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def _splits(n_train=30, n_val=15, size=64):
    rng = np.random.default_rng(0)
    make = lambda n: (rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),  # noqa: E731
                      np.arange(n) % 15)
    device = torch.device("cpu")
    return CachedSplit(*make(n_train), device), CachedSplit(*make(n_val), device)


class _NanAfter(Objective):
    def __init__(self, good_steps):
        self.calls, self.good_steps = 0, good_steps

    def loss(self, model, batch):
        loss, logits, terms = super().loss(model, batch)
        self.calls += 1
        return (loss * math.nan if self.calls > self.good_steps else loss), logits, terms


def test_a_nan_loss_stops_the_run_naming_epoch_and_step():
    model, _ = build_model(TrainConfig())
    train_split, val_split = _splits()
    config = TrainConfig(epochs=3, batch_size=10, log_every=1000)
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step 5 \(step 2 of the epoch\)"):
        train(model, _NanAfter(good_steps=4), train_split, val_split,
              _augment_for(model), config)


def _augment_for(model):
    from harclip.models import image_normalisation, model_image_size

    return DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip))


def test_train_records_the_studys_columns_every_epoch():
    torch.manual_seed(0)
    model, _ = build_model(TrainConfig())
    train_split, val_split = _splits()
    config = TrainConfig(epochs=2, batch_size=10, micro_batch_size=5, log_every=1,
                         augment=AugmentConfig(scale_min=0.5))
    seen = []
    history = train(model, Objective(), train_split, val_split, _augment_for(model), config,
                    on_epoch=seen.append)
    assert [r.epoch for r in history] == [1, 2] and seen == history
    for record in history:
        assert 0 <= record.train_acc <= 1 and 0 <= record.val_acc <= 1
        assert record.train_loss > 0 and record.val_loss > 0
        assert record.epoch_time_s > 0 and record.images_per_s > 0
        assert record.peak_memory_mb > 10  # the process's peak RSS on CPU
    assert history[-1].lr < history[0].lr


def test_no_training_step_or_model_selection_reads_the_test_split(small_cache, tmp_path,
                                                                  monkeypatch):
    from harclip import training as train_stage

    read = []
    original = train_stage.load_split
    monkeypatch.setattr(train_stage, "load_split",
                        lambda cache, split: read.append(split) or original(cache, split))
    assert len(original(small_cache, "test")[1]) > 0  # there is a test split to leak
    train_stage.run("clip", TrainConfig(epochs=1, batch_size=32, device="cpu"), small_cache,
                    tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    assert sorted(read) == ["train", "val"]
