"""The fine-tuning tools, each against what it promises: layer-wise lr decay, an EMA of the
weights, label smoothing, LoRA adapters saved merged, a linear probe, gradient checkpointing
and WiSE-FT."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harclip import training
from harclip.checkpoints import load_checkpoint, save_checkpoint
from harclip.config import AclipTrainConfig, EvaluateConfig, TrainConfig
from harclip.engine import make_scheduler
from harclip.evaluation import evaluate
from harclip.feed import Batch
from harclip.models import build_model, create_backbone
from harclip.records import read_epochs
from harclip.tuning import parameter_groups
from tests.test_recipe_paths import _trainer

CPU = torch.device("cpu")


@pytest.mark.parametrize(("name", "block"), [("harclip-tiny-clip", "transformer.resblocks"),
                                             ("harclip-tiny-siglip", "trunk.blocks")])
def test_each_block_gets_the_lr_the_layer_decay_formula_says(name, block):
    """lr × decay^(depth − i) for block i (from 0), the embeddings deeper still, the head and
    everything after the blocks at the full lr; through timm's scheduler too."""
    config = TrainConfig(model=name, layer_decay=0.5, lr=1e-3, epochs=2, warmup_epochs=0.0,
                         head_init="random")
    model, _ = build_model(config)
    groups = parameter_groups(model, 0.1, config.layer_decay)
    scale = {id(p): group["lr_scale"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    depth = 4
    for i in range(depth):
        block_params = [p for n, p in named.items() if f"visual.{block}.{i}." in n]
        assert block_params and {scale[id(p)] for p in block_params} == {0.5 ** (depth - i)}
    stem = "conv1.weight" if "resblocks" in block else "trunk.patch_embed.proj.weight"
    assert scale[id(named[f"clip.visual.{stem}"])] == 0.5 ** (depth + 1)
    assert scale[id(named["head.weight"])] == 1.0
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    make_scheduler(optimizer, config, steps_per_epoch=10).step_update(0)  # start: lr itself
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in optimizer.param_groups)


def test_the_weights_ema_is_the_running_average_and_survives_a_resume():
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=8, ema_decay=0.5, warmup_epochs=0.0, lr=1e-2)
    trainer = _trainer(config, n_train=32)
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
    resumed = _trainer(config, n_train=32)
    resumed.load_state_dict(trainer.state_dict())
    again = resumed.ema.module.state_dict()
    for key, value in trainer.ema.module.state_dict().items():
        if key not in trainer.frozen:  # the frozen text tower comes from `pretrained`
            assert torch.equal(value, again[key]), key


def test_the_best_of_the_weights_and_their_ema_is_kept_and_said(small_cache, tmp_path):
    config = TrainConfig(epochs=3, batch_size=64, ema_decay=0.6, device="cpu")
    summary = training.run("clip", config, small_cache, tmp_path / "models",
                           tmp_path / "logs", tmp_path / "resume")
    rows = read_epochs(tmp_path / "logs" / "clip")
    scores = [(row[key], row["epoch"], weights) for row in rows
              for weights, key in (("raw", "val_acc"), ("ema", "ema_val_acc"))]
    best = max(scores, key=lambda item: item[0])
    _, meta = load_checkpoint(tmp_path / "models" / "clip.pt")
    assert meta["val_acc"] == pytest.approx(best[0], abs=1e-6)  # the logs keep 6 decimals
    assert (meta["epoch"], meta["weights"]) == best[1:]
    assert summary["best_weights"] == meta["weights"]


def test_label_smoothing_changes_the_loss_as_cross_entropy_does():
    torch.manual_seed(0)
    config = TrainConfig(label_smoothing=0.2, head_init="random")
    model, prompts = build_model(config)
    objective = training.build_objective(config, model, prompts)
    images, labels = torch.randn(6, 3, 64, 64), torch.arange(6)
    model.eval()
    loss, logits, (logged, _) = objective.loss(model, Batch(images, labels))
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels,
                                                        label_smoothing=0.2).item())
    assert logged.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert loss.item() != pytest.approx(logged.item())


@pytest.mark.parametrize("name", ["harclip-tiny-clip", "harclip-tiny-siglip"])
def test_lora_trains_a_few_parameters_and_its_merged_checkpoint_predicts_the_same(name,
                                                                                  tmp_path):
    torch.manual_seed(0)
    full, _ = build_model(TrainConfig(model=name, head_init="random"))
    lora, _ = build_model(TrainConfig(model=name, head_init="random", tune="lora"))
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert 0 < count(lora) < 0.1 * count(full)
    adapters = [n for n, p in lora.named_parameters() if p.requires_grad and "lora_" in n]
    assert any("attn" in n for n in adapters) and any(("c_fc" in n) or ("fc1" in n)
                                                      for n in adapters)
    with torch.no_grad():  # trained adapters, not the identity peft starts from
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    images = torch.randn(4, 3, 64, 64)
    expected = lora.eval()(images)
    save_checkpoint(tmp_path / "lora.pt", lora, name, [str(i) for i in range(15)],
                    {"params": {}, "epoch": 1, "val_acc": 0.0})
    merged, _ = load_checkpoint(tmp_path / "lora.pt")  # plain weights: no adapter
    assert torch.allclose(merged(images), expected, atol=1e-4)
    assert not any("lora_" in key for key in torch.load(tmp_path / "lora.pt",
                                                        weights_only=True)["state_dict"])


def test_every_lora_adapter_gets_a_gradient():
    """peft on open_clip's nn.MultiheadAttention: an adapter on out_proj alone would never
    see a gradient; each adapter here does (lora_A once lora_B has moved from zero)."""
    torch.manual_seed(0)
    model, _ = build_model(TrainConfig(head_init="random", tune="lora"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert adapters and all(p.grad is not None and p.grad.abs().sum() > 0
                            for p in adapters.values())


def test_a_linear_probe_leaves_the_backbone_bit_identical():
    torch.manual_seed(0)
    trainer = _trainer(TrainConfig(epochs=1, batch_size=8, tune="linear"), n_train=16)
    before = {k: v.clone() for k, v in trainer.model.clip.state_dict().items()}
    head = trainer.model.head.weight.detach().clone()
    trainer.fit()
    after = trainer.model.clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head, trainer.model.head.weight)


@pytest.mark.parametrize("config_type", [TrainConfig, AclipTrainConfig])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(config_type):
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        config = config_type(head_init="random", grad_checkpointing=checkpointing)
        model, prompts = build_model(config)
        objective = training.build_objective(config, model, prompts)
        images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        batch = Batch(images, torch.arange(8), torch.arange(8),
                      torch.eye(2, 3).expand(8, 2, 3), whole=images)
        model.train()
        loss, _, _ = objective.loss(model, batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    assert torch.allclose(loss, loss_ckpt, atol=1e-5) and grads.keys() == grads_ckpt.keys()
    assert all(torch.allclose(grads[n], grads_ckpt[n], atol=1e-5) for n in grads)


PEAK = """
import sys, torch
from harclip.config import TrainConfig
from harclip.hardware import peak_memory_mb, reset_peak_memory
from harclip.models import build_model
torch.manual_seed(0)
model, _ = build_model(TrainConfig(head_init="random", grad_checkpointing=sys.argv[1] == "1"))
model(torch.randn(2, 3, 64, 64)).logsumexp(dim=1).sum().backward()  # one-time allocations
model.zero_grad(set_to_none=False)
images = torch.randn(192, 3, 64, 64)
device = torch.device("cpu")
reset_peak_memory(device)
base = peak_memory_mb(device)
model(images).logsumexp(dim=1).sum().backward()
print(peak_memory_mb(device) - base)
"""


def test_gradient_checkpointing_lowers_the_peak_memory():
    """A step's peak resident memory on the CPU above what the process held before it, each
    in a fresh process (freed pages a process keeps would flatter a second step of the same
    size). A 2-image step first makes the autograd and kernel libraries' one-time allocations,
    which alone are most of a first step's peak (in CI: 711 against 690 MB without it)."""
    peaks = {flag: float(subprocess.run([sys.executable, "-c", PEAK, flag], check=True,
                                        capture_output=True, text=True).stdout)
             for flag in ("0", "1")}
    assert peaks["1"] < 0.8 * peaks["0"], peaks  # measured 0.54-0.55 (1 and 2 threads)


def test_wise_ft_runs_from_the_zero_shot_model_to_the_fine_tuned_one(small_cache, tmp_path):
    torch.manual_seed(3)
    start = tmp_path / "start.pt"
    torch.save(create_backbone("harclip-tiny-clip", None).state_dict(), start)
    config = TrainConfig(pretrained=str(start), head_init="text", epochs=1, batch_size=64,
                         lr=1e-3, device="cpu")
    training.run("clip", config, small_cache, tmp_path / "models", tmp_path / "logs",
                 tmp_path / "resume")
    metrics = evaluate("clip", EvaluateConfig(device="cpu", wise_alphas=(0.0, 0.5, 1.0)),
                       small_cache, tmp_path / "models", tmp_path / "metrics")
    report = json.loads((tmp_path / "metrics" / "clip" / "report.json").read_text())
    curve = report["wise_ft"]
    assert list(curve) == ["0", "0.5", "1"]
    assert curve["0"] == report["zero_shot_accuracy"]  # α = 0: the zero-shot model
    assert curve["1"] == {split: report["scores"][split]["accuracy"]  # α = 1: fine-tuned
                          for split in ("val", "test")}
    chosen = max(curve, key=lambda a: curve[a]["val"])
    assert metrics["wise_alpha"] == float(chosen)
    assert metrics["wise_test_acc"] == curve[chosen]["test"]


def test_wise_ft_is_skipped_for_a_run_from_scratch(small_cache, tmp_path, caplog):
    training.run("clip", TrainConfig(epochs=1, batch_size=64, device="cpu"), small_cache,
                 tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    with caplog.at_level("INFO", logger="harclip"):
        metrics = evaluate("clip", EvaluateConfig(device="cpu", wise_alphas=(0.0, 1.0)),
                           small_cache, tmp_path / "models", tmp_path / "metrics")
    assert "wise_alpha" not in metrics
    assert any("no WiSE-FT" in r.getMessage() for r in caplog.records)


def test_every_option_is_off_by_default_and_validated():
    default = TrainConfig()
    assert (default.layer_decay, default.ema_decay, default.label_smoothing, default.tune,
            default.grad_checkpointing) == (1.0, 0.0, 0.0, "full", False)
    assert EvaluateConfig().wise_alphas == ()
    with pytest.raises(ValueError):
        replace(default, tune="half")
    assert np.isclose(replace(default, layer_decay=0.65).layer_decay, 0.65)
