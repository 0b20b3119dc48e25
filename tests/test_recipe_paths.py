"""Code paths only the HAR recipe (pretrained tags, bf16, compile, a GPU) reaches, exercised
on the CPU: a pretrained tag's normalisation, a checkpoint's saved preprocessing, autocast
around the head and the saliency refresh, resume state loaded off the device, constants kept
on the device, and A-CLIP under torch.compile."""

from __future__ import annotations

import csv
import json
import math
import types

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss

from harclip import evaluation, hardware, stage, training
from harclip.aclip import AclipObjective, select_tokens
from harclip.augment import DeviceAugment
from harclip.cache import load_split
from harclip.checkpoints import load_checkpoint, save_checkpoint
from harclip.config import AclipConfig, AclipTrainConfig, EvaluateConfig, TrainConfig
from harclip.engine import Trainer, predict
from harclip.feed import Batch, CachedSplit, effective_batches, resident_cache_bytes
from harclip.har import CLASS_NAMES
from harclip.models import (
    build_model,
    class_text_loss,
    create_backbone,
    image_normalisation,
    preprocessing_of,
    tag_normalisation,
)
from harclip.objectives import ContrastiveObjective

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
CPU = torch.device("cpu")


@pytest.fixture
def fake_tag(tmp_path, monkeypatch):
    """A pretrained tag `webli` for harclip-tiny-siglip with SigLIP's normalisation, whose
    'download' is a weights file saved here: open_clip's own tag path, offline."""
    torch.manual_seed(3)
    weights = tmp_path / "webli.pt"
    torch.save(create_backbone("harclip-tiny-siglip", None).state_dict(), weights)
    tags = {"webli": {"url": "https://example.invalid/webli.pt", "hf_hub": "",
                      "mean": SIGLIP_MEAN, "std": SIGLIP_STD}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "harclip-tiny-siglip", tags)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: str(weights))
    return weights


def test_a_pretrained_tag_brings_its_normalisation_into_training_and_the_checkpoint(
        fake_tag, tmp_path):
    config = TrainConfig(model="harclip-tiny-siglip", pretrained="webli")
    model, _ = build_model(config)
    assert preprocessing_of(model.clip)["mean"] == list(SIGLIP_MEAN)
    save_checkpoint(tmp_path / "m.pt", model, config.model, CLASS_NAMES, {})
    _, meta = load_checkpoint(tmp_path / "m.pt")
    assert meta["mean"] == list(SIGLIP_MEAN) and meta["std"] == list(SIGLIP_STD)
    # a local weights file takes what every tag of its architecture shares
    assert tag_normalisation("harclip-tiny-siglip") == {"mean": SIGLIP_MEAN, "std": SIGLIP_STD}
    from_file = create_backbone("harclip-tiny-siglip", str(fake_tag))
    assert tuple(from_file.visual.preprocess_cfg["mean"]) == SIGLIP_MEAN
    assert tag_normalisation("ViT-B-16-SigLIP") == {"mean": SIGLIP_MEAN, "std": SIGLIP_STD}


def test_evaluate_uses_the_checkpoints_saved_preprocessing(small_cache, tmp_path):
    """A checkpoint whose mean/std differ from its architecture's defaults is scored with the
    saved ones, and so are its zero-shot baseline's inputs with the tag's own."""
    torch.manual_seed(0)
    model, _ = build_model(TrainConfig(model="harclip-tiny-clip"))
    saved = {"image_size": 64, "mean": [0.9, 0.1, 0.5], "std": [0.05, 0.5, 0.2]}
    save_checkpoint(tmp_path / "models" / "clip.pt", model, "harclip-tiny-clip", CLASS_NAMES,
                    {"params": {}, "epoch": 1})
    payload = torch.load(tmp_path / "models" / "clip.pt", weights_only=True)
    torch.save({**payload, **saved}, tmp_path / "models" / "clip.pt")

    loaded, _ = load_checkpoint(tmp_path / "models" / "clip.pt")
    assert preprocessing_of(loaded.clip) == saved  # one source of truth, rebuilt with it
    metrics = evaluation.evaluate("clip", EvaluateConfig(device="cpu"), small_cache,
                                tmp_path / "models", tmp_path / "metrics")
    images, labels = load_split(small_cache, "test")  # predictions.csv is on test
    split = CachedSplit(images, labels, CPU)
    with_saved = predict(loaded, split, DeviceAugment.for_eval(saved), 64, None)
    with_defaults = predict(loaded, split, DeviceAugment.for_eval(preprocessing_of(model.clip)),
                            64, None)
    assert not torch.equal(with_saved.argmax(1), with_defaults.argmax(1))  # it matters here
    with open(tmp_path / "metrics" / "clip" / "predictions.csv") as handle:
        written = [CLASS_NAMES.index(row["predicted"]) for row in csv.DictReader(handle)]
    assert written == with_saved.argmax(1).tolist()
    assert metrics["test_acc"] == pytest.approx(
        (with_saved.argmax(1).numpy() == labels).mean())


def test_zero_shot_baseline_uses_the_pretrained_tags_normalisation(fake_tag, small_cache,
                                                                    monkeypatch):
    seen = []
    original = DeviceAugment.for_eval
    monkeypatch.setattr(DeviceAugment, "for_eval",
                        classmethod(lambda cls, p: seen.append(p) or original(p)))
    images, labels = load_split(small_cache, "val")
    config = TrainConfig(model="harclip-tiny-siglip", pretrained="webli")
    accuracy = evaluation.zero_shot_accuracy(config, list(CLASS_NAMES),
                                           {"val": CachedSplit(images, labels, CPU)}, 64)
    assert 0.0 <= accuracy["val"] <= 1.0
    assert [p["mean"] for p in seen] == [list(SIGLIP_MEAN)]


def test_class_logits_are_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model, _ = build_model(TrainConfig())
    images = torch.randn(4, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.image_features(images)
        logits = model.head(features)
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = F.linear(features.float(), model.head.weight, model.head.bias)
    assert torch.equal(logits, expected)


def _aligned(n_classes=15, batch=64, dim=32):
    """Orthonormal class texts, and labels that hold every class several times."""
    class_text = torch.linalg.qr(torch.randn(dim, n_classes))[0].T.contiguous()
    labels = torch.arange(batch) % n_classes
    return class_text, labels


@pytest.mark.parametrize("siglip", [False, True])
def test_image_text_term_has_its_minimum_at_the_own_class_and_pulls_towards_it(siglip):
    torch.manual_seed(0)
    class_text, labels = _aligned()
    clip = types.SimpleNamespace(logit_scale=torch.tensor(math.log(100.0)),
                                 logit_bias=torch.tensor(-10.0) if siglip else None)
    aligned = class_text[labels]
    minimal = class_text_loss(aligned, class_text, labels, clip)
    assert minimal < 1e-3  # 64 images, each class about 4 times: no duplicate is a negative
    if siglip:  # open_clip's per-image SigLipLoss would count each repeat as a negative
        per_image = SigLipLoss()(aligned, aligned, clip.logit_scale.exp(), clip.logit_bias)
        assert per_image > 100
    other = class_text[(labels + 1) % 15]  # features mistaken for another class:
    features = F.normalize(other + 0.1 * aligned, dim=-1).requires_grad_()
    loss = class_text_loss(features, class_text, labels, clip)
    assert loss > minimal
    loss.backward()
    step = -features.grad
    assert ((step * aligned).sum(1) > 0).all()  # towards the own class text
    assert ((step * other).sum(1) < 0).all()  # away from the other one


def test_contrastive_objective_logs_cross_entropy_and_image_text_apart():
    torch.manual_seed(0)
    config = TrainConfig(contrastive_weight=0.5)
    model, prompts = build_model(config)
    objective = training.build_objective(config, model, prompts)
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


def _trainer(config, n_train=40, n_val=8):
    rng = np.random.default_rng(0)
    split = lambda n: CachedSplit(rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8),  # noqa: E731
                                  np.arange(n) % 15, CPU)
    model, prompts = build_model(config)
    augment = DeviceAugment(64, *image_normalisation(model.clip))
    return Trainer(model, training.build_objective(config, model, prompts), split(n_train),
                   split(n_val), augment, config)


def test_resume_state_loads_onto_the_cpu_whatever_the_device(tmp_path):
    """Generator states must be CPU byte tensors (a state mapped onto a GPU fails in
    set_state); the A-CLIP teacher's cached map follows the teacher's device."""
    config = AclipTrainConfig(epochs=2, batch_size=8,
                              aclip=AclipConfig(saliency="cached", keep_ratio=0.5))
    torch.manual_seed(0)
    trainer = _trainer(config)
    trainer.fit()
    path = tmp_path / "state.pt"
    training.save_resume_state(path, "f", trainer)
    state = training.load_resume_state(path, "f")
    tensors = [v for v in _leaves(state) if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert state["rng"]["shuffle"].dtype == torch.uint8
    torch.manual_seed(1)
    fresh = _trainer(config)
    fresh.load_state_dict(state)
    assert fresh.objective.cached.device == next(fresh.objective.teacher.parameters()).device
    assert torch.equal(fresh.shuffle.get_state(), trainer.shuffle.get_state())


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def test_saliency_refresh_runs_under_the_runs_autocast_and_is_timed_apart():
    config = AclipTrainConfig(epochs=1, batch_size=8, precision="bf16",
                              aclip=AclipConfig(saliency="cached"))
    torch.manual_seed(0)
    trainer = _trainer(config)
    autocast_seen = []
    trainer.objective.teacher.transformer.resblocks[0].ln_1.register_forward_pre_hook(
        lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))
    record, = trainer.fit()
    assert autocast_seen and all(autocast_seen)
    assert 0 < record.refresh_time_s < record.epoch_time_s
    assert trainer.objective.cached.dtype == torch.float32


def test_no_per_step_host_copies_of_constants(monkeypatch):
    """Token offsets and normalisation constants are made on the device once: a host tensor
    copied up each step would block the host on a GPU."""
    augment = DeviceAugment(8, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    augment.eval(images)
    mean = augment.mean

    def no_host_tensors(*args, **kwargs):
        raise AssertionError("torch.tensor called inside a training step")

    monkeypatch.setattr(torch, "tensor", no_host_tensors)
    augment.warp(images, augment.crop_params(2, torch.Generator().manual_seed(0), CPU))
    assert augment.mean is mean  # not copied again
    keep = select_tokens(torch.rand(2, 196), 0.5, 14, blocks=True)
    assert keep.shape == (2, 25 * 4)


def test_aclip_student_compiles_once_whatever_tokens_it_keeps():
    """The student's token selection changes every step; under torch.compile that must not
    recompile or break the graph (aot_eager: the graph capture without the code generation)."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    torch.manual_seed(0)
    config = AclipTrainConfig(aclip=AclipConfig(saliency="teacher"))
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


def test_a_compiled_run_drops_the_short_last_step():
    order = torch.arange(23)
    assert [len(g) for g in effective_batches(order, 8, 1)] == [8, 8, 7]
    assert [len(g) for g in effective_batches(order, 8, 1, drop_last=True)] == [8, 8]
    trainer = _trainer(TrainConfig(epochs=1, batch_size=16, compile=False), n_train=40)
    assert trainer.steps_per_epoch == 3
    compiled = _trainer(TrainConfig(epochs=1, batch_size=16, compile=True), n_train=40)
    assert compiled.steps_per_epoch == 2  # the Trainer does not compile; the stage does


def test_open_clips_root_logger_chatter_stays_out_of_stage_logs(caplog):
    stage.configure_logging()
    with caplog.at_level("INFO"):
        create_backbone("harclip-tiny-clip", None)
    assert not [r for r in caplog.records if "pretrained weights" in r.getMessage()]


def test_steady_state_time_leaves_the_first_epoch_of_each_process_out():
    """The run's first epoch and a resumed run's first (epoch 3 here) compile again."""
    records = [types.SimpleNamespace(epoch_time_s=t, refresh_time_s=r, images_per_s=100 / t,
                                     peak_memory_mb=m, warm_up=w)
               for t, r, m, w in ((30.0, 1.0, 5.0, True), (2.0, 0.5, 7.0, False),
                                  (25.0, 0.5, 6.0, True), (4.0, 0.0, 6.0, False))]
    summary = training.timing_summary(records)
    assert summary["mean_epoch_time_s"] == 3.0 and summary["first_epoch_time_s"] == 30.0
    assert summary["mean_refresh_time_s"] == 0.25 and summary["peak_memory_mb"] == 7.0
    assert summary["mean_images_per_s"] == pytest.approx((50 + 25) / 2)
    assert json.dumps(summary)


def test_each_process_marks_its_first_epoch_as_warm_up(small_cache):
    config = TrainConfig(epochs=3, batch_size=64, device="cpu")
    model, prompts = build_model(config)
    images, labels = load_split(small_cache, "train")
    split = CachedSplit(images[:64], labels[:64], CPU)
    augment = DeviceAugment(64, *image_normalisation(model.clip))
    trainer = Trainer(model, training.build_objective(config, model, prompts), split, split,
                      augment, config)
    def stop_after_epoch_2(record):
        if record.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.fit(stop_after_epoch_2)
    state = trainer.state_dict()
    resumed = Trainer(model, training.build_objective(config, model, prompts), split, split,
                      augment, config)
    resumed.load_state_dict(state)
    assert [r.warm_up for r in resumed.fit()] == [True, False, True]


def test_a_gpu_is_resolved_with_its_index(monkeypatch):
    """Tensors moved to `cuda` report `cuda:0`, which does not equal `cuda`: a device without
    its index made a single-GPU run take the host path for a cache already on the GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert torch.device("cuda") != torch.device("cuda", 0)
    for name in ("auto", "cuda", "cuda:0"):
        assert hardware.resolve_device(name) == torch.device("cuda", 0)
    assert hardware.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_a_resident_cache_is_indexed_where_it_lies_whatever_the_devices_name():
    """The same mismatch on the CPU (`cpu:0` is not `cpu`): batches come from the resident
    cache, with no pinned host copy, and its bytes are taken off the peak."""
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    split = CachedSplit(images, np.arange(4), torch.device("cpu", 0))
    assert split.resident and resident_cache_bytes(split) == images.nbytes
    batch, labels = next(split.batches(torch.arange(4), 4))  # pinning would need CUDA
    assert batch.shape == (4, 3, 8, 8) and labels.tolist() == [0, 1, 2, 3]
