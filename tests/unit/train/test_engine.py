"""The training engine: a step lowers the loss, micro-batches accumulate to the one-batch
gradient, a NaN stops the run naming the step, the weights' EMA, a linear probe, DDP over a
group of one, no recompile in validation, no host reads without a progress bar, constants
kept on the device, a streamed cache on the resident one's trajectory."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from harclip.data.cache import CacheItem, load_split, write_cache
from harclip.model.backbones import image_normalisation
from harclip.model.classifier import build_model
from harclip.model.feed import Batch, CachedSplit, effective_batches
from harclip.model.optim import parameter_groups
from harclip.model.views import DeviceAugment
from harclip.runtime.distributed import World
from harclip.train.aclip import select_tokens
from harclip.train.engine import Trainer, TrainingDiverged, TrainStep, accumulate_gradients
from harclip.train.objectives import ContrastiveObjective, Objective
from harclip.train.stage import build_objective
from tests.support.params import augment_config, train_config
from tests.support.runs import make_trainer, random_batch

CPU = torch.device("cpu")


TINY = ("harclip-tiny-clip", "harclip-tiny-siglip")


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


def _augment_for(model):
    from harclip.model.backbones import model_image_size

    return DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip))


def test_the_weights_ema_is_the_running_average_and_survives_a_resume():
    torch.manual_seed(0)
    config = train_config(epochs=1, batch_size=8, ema_decay=0.5, warmup_epochs=0.0, lr=1e-2)
    trainer = make_trainer(config, n_train=32)
    watched = "head.weight"
    expected, original = None, trainer.train_step_on

    def step_and_average(*args, **kwargs):
        nonlocal expected
        out = original(*args, **kwargs)
        weights = dict(trainer.model.named_parameters())[watched].detach().clone()
        # timm's ModelEmaV3 takes the weights after the first step as they are
        expected = weights if expected is None else 0.5 * expected + 0.5 * weights
        return out

    trainer.train_step_on = step_and_average
    record, = trainer.fit()
    assert trainer.step == 4
    ema = dict(trainer.ema.module.named_parameters())[watched]
    weights = dict(trainer.model.named_parameters())[watched]
    assert torch.allclose(ema, expected, atol=1e-6)
    assert not torch.allclose(ema, weights, atol=1e-4)  # an average, not the last weights
    assert record.ema_val_acc is not None and record.ema_val_loss is not None
    torch.manual_seed(1)
    resumed = make_trainer(config, n_train=32)
    resumed.load_state_dict(trainer.state_dict())
    again = resumed.ema.module.state_dict()
    for key, value in trainer.ema.module.state_dict().items():
        if key not in trainer.frozen:  # the frozen text tower comes from `pretrained`
            assert torch.equal(value, again[key]), key


def test_a_linear_probe_leaves_the_backbone_bit_identical():
    torch.manual_seed(0)
    trainer = make_trainer(train_config(epochs=1, batch_size=8, tune="linear"), n_train=16)
    before = {k: v.clone() for k, v in trainer.model.clip.state_dict().items()}
    head = trainer.model.head.weight.detach().clone()
    trainer.fit()
    after = trainer.model.clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head, trainer.model.head.weight)


def test_a_group_of_one_wraps_the_step_in_the_installed_ddp_and_trains(tmp_path):
    """What `torchrun --nproc-per-node=1` gives a stage: a process group of one, so the GPU
    check builds DistributedDataParallel on a single GPU too."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        config = train_config(epochs=1, batch_size=8, device="cpu")
        torch.manual_seed(0)
        trainer = make_trainer(config, n_train=16)
        grouped = type(trainer)(trainer.model, trainer.objective, trainer.train_split,
                                trainer.val_split, trainer.augment, config,
                                World(grouped=True))
        assert isinstance(grouped.train_step, nn.parallel.DistributedDataParallel)
        record, = grouped.fit()
        assert record.train_loss > 0
    finally:
        dist.destroy_process_group()


def test_validation_of_a_compiled_tower_compiles_nothing_more():
    """Eval mode, no_grad and another batch size would make Dynamo compile the tower again
    (with a dynamic batch); validation runs eager instead (aot_eager: the capture without
    code generation)."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    torch.manual_seed(0)
    trainer = make_trainer(train_config(epochs=2, batch_size=8, compile=True), n_train=16,
                           n_val=12)
    trainer.model.clip.visual.compile(backend="aot_eager")
    history = trainer.fit()
    assert counters["stats"]["unique_graphs"] == 1  # the training step's graph alone
    assert all(record.val_time_s > 0 for record in history)
    torch._dynamo.reset()


def test_no_host_reads_in_an_epoch_without_a_live_progress_bar(monkeypatch):
    """Under pytest (no terminal) the bar is off: the loss and accuracy stay on the device
    until the epoch ends, however many steps log_every would refresh."""
    reads = []
    original = torch.Tensor.item

    def item(tensor):  # the engine's reads (AdamW's own on the CPU are not a GPU's)
        if sys._getframe(1).f_code.co_filename.endswith(("engine.py", "distributed.py")):
            reads.append(1)
        return original(tensor)

    monkeypatch.setattr(torch.Tensor, "item", item)
    counts = []
    for images in (16, 48):  # 2 and 6 steps
        reads.clear()
        trainer = make_trainer(train_config(epochs=1, batch_size=8, log_every=1), n_train=images)
        trainer.fit()
        counts.append(len(reads))
    assert counts[0] == counts[1]  # none per step


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


def test_a_compiled_run_drops_the_short_last_step():
    order = torch.arange(23)
    assert [len(g) for g in effective_batches(order, 8, 1)] == [8, 8, 7]
    assert [len(g) for g in effective_batches(order, 8, 1, drop_last=True)] == [8, 8]
    trainer = make_trainer(train_config(epochs=1, batch_size=16, compile=False), n_train=40)
    assert trainer.steps_per_epoch == 3
    compiled = make_trainer(train_config(epochs=1, batch_size=16, compile=True), n_train=40)
    assert compiled.steps_per_epoch == 2  # the Trainer does not compile; the stage does


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("contrastive_weight", [0.0, 0.5])
def test_one_optimiser_step_lowers_the_loss_on_a_fixed_batch(name, contrastive_weight):
    torch.manual_seed(0)
    config = train_config(model=name, contrastive_weight=contrastive_weight)
    model, prompts = build_model(config)
    objective = build_objective(config, model, prompts)
    assert isinstance(objective, ContrastiveObjective) == bool(contrastive_weight)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-4)
    images, labels = random_batch()
    model.eval()  # no dropout: the same batch gives the same loss
    before, _, _ = objective.loss(model, Batch(images, labels))
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after, _, _ = objective.loss(model, Batch(images, labels))
    assert after.item() < before.item()


def test_accumulating_micro_batches_gives_the_one_batch_gradient():
    torch.manual_seed(0)
    model, _ = build_model(train_config())
    model.eval()
    images, labels = random_batch(n=8)
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


def test_a_nan_loss_stops_the_run_naming_epoch_and_step():
    model, _ = build_model(train_config())
    train_split, val_split = _splits()
    config = train_config(epochs=3, batch_size=10, log_every=1000)
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step 5 \(step 2 of the epoch\)"):
        Trainer(model, _NanAfter(good_steps=4), train_split, val_split, _augment_for(model),
                config).fit()


def test_train_records_the_studys_columns_every_epoch():
    torch.manual_seed(0)
    model, _ = build_model(train_config())
    train_split, val_split = _splits()
    config = train_config(epochs=2, batch_size=10, micro_batch_size=5, log_every=1,
                          augment=augment_config(scale_min=0.5))
    seen = []
    history = Trainer(model, Objective(), train_split, val_split, _augment_for(model),
                      config).fit(on_epoch=seen.append)
    assert [r.epoch for r in history] == [1, 2] and seen == history
    for record in history:
        assert 0 <= record.train_acc <= 1 and 0 <= record.val_acc <= 1
        assert record.train_loss > 0 and record.val_loss > 0
        assert record.epoch_time_s > 0 and record.images_per_s > 0
        assert record.peak_memory_mb > 10  # the process's peak RSS on CPU
    assert history[-1].lr < history[0].lr


def test_a_streamed_cache_trains_on_the_resident_caches_trajectory(tmp_path):
    """Same seed, same order of images and crops: the first epochs' losses are identical."""
    rng = np.random.default_rng(0)
    items = [CacheItem(f"{i}", i % 15, f"h{i}",
                       rng.integers(0, 256, (3, 64, 64), dtype=np.uint8)) for i in range(45)]
    write_cache(tmp_path, items, np.arange(45) // 30, list(map(str, range(15))), 64)
    splits = [load_split(tmp_path, split) for split in ("train", "val")]
    histories = []
    for budget in (None, 1):  # the machine's, then one byte: auto streams both splits
        torch.manual_seed(0)
        model, _ = build_model(train_config())
        train_split, val_split = (CachedSplit(*split, CPU, "auto", host_budget=budget)
                                  for split in splits)
        assert train_split.where == ("host" if budget is None else "stream")
        config = train_config(epochs=2, batch_size=10, augment=augment_config(scale_min=0.5))
        histories.append(Trainer(model, Objective(), train_split, val_split,
                                 _augment_for(model), config).fit())
        if budget is not None:  # each epoch's steps took their batches from one planned pass
            assert train_split.stream.passes == config.epochs
    for resident, streamed in zip(*histories, strict=True):
        assert (resident.train_loss, resident.val_loss, resident.val_acc) == \
            (streamed.train_loss, streamed.val_loss, streamed.val_acc)
