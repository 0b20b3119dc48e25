"""evaluate and plot: metrics that agree with scikit-learn, figures and the study's tables."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from harclip.config import EvaluateConfig, PlotConfig, TrainConfig
from harclip.evaluate import classification_metrics, evaluate
from harclip.har import CLASS_NAMES
from harclip.models import create_backbone, save_checkpoint
from harclip.plot import plot
from harclip.stage import StageError
from harclip.train import METHODS, build_model


def test_classification_metrics_match_a_hand_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 15, 200)
    logits = rng.normal(size=(200, 15))
    logits[np.arange(100), labels[:100]] += 5  # half of them right
    metrics = classification_metrics(labels, logits, list(CLASS_NAMES))
    predicted = logits.argmax(1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    hits = [label in best for label, best in zip(labels, top5, strict=True)]
    assert metrics["top5_accuracy"] == pytest.approx(np.mean(hits))
    for index, name in enumerate(CLASS_NAMES):
        mine = labels == index
        assert metrics["per_class_accuracy"][name] == pytest.approx(
            np.mean(predicted[mine] == index) if mine.any() else 0.0)


def _cache(root, n=30, size=32):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    np.save(root / "val_images.npy", rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8))
    np.save(root / "val_labels.npy", np.arange(n) % 15)


def _checkpoint(models, name, pretrained=None):
    torch.manual_seed(0)
    config = TrainConfig(pretrained=pretrained, head_init="text")
    model, _ = build_model(config)
    from dataclasses import asdict

    save_checkpoint(models / f"{name}.pt", model, config.model, CLASS_NAMES,
                    {"params": asdict(config), "epoch": 2, "val_acc": 0.5})


def test_evaluate_writes_metrics_that_agree_with_sklearn_on_its_predictions(tmp_path):
    _cache(tmp_path / "cache")
    weights = tmp_path / "backbone.pt"
    torch.save(create_backbone("harclip-tiny-clip", None).state_dict(), weights)
    _checkpoint(tmp_path / "models", "clip", pretrained=str(weights))
    metrics = evaluate("clip", EvaluateConfig(batch_size=7), tmp_path / "cache",
                       tmp_path / "models", tmp_path / "metrics")
    saved = json.loads((tmp_path / "metrics" / "clip" / "eval.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    with open(tmp_path / "metrics" / "clip" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    actual = [r["actual"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    assert len(rows) == 30 and set(actual) == set(CLASS_NAMES)
    assert saved["accuracy"] == pytest.approx(accuracy_score(actual, predicted))
    assert saved["macro_f1"] == pytest.approx(
        f1_score(actual, predicted, labels=list(CLASS_NAMES), average="macro", zero_division=0))
    assert saved["checkpoint_epoch"] == 2 and saved["val_images"] == 30
    # The checkpoint's head was initialised from text and never trained, so the untouched
    # backbone's zero-shot accuracy is the same number.
    assert saved["zero_shot_accuracy"] == pytest.approx(saved["accuracy"])


def test_evaluate_without_a_checkpoint_names_it_and_the_stage_that_makes_it(tmp_path):
    _cache(tmp_path / "cache")
    with pytest.raises(StageError, match=r"models/sglip.pt: checkpoint not found; the "
                                         r"train_sglip stage makes it"):
        evaluate("sglip", EvaluateConfig(), tmp_path / "cache", tmp_path / "models",
                 tmp_path / "metrics")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sglip.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StageError, match="sglip.pt: not a readable checkpoint"):
        evaluate("sglip", EvaluateConfig(), tmp_path / "cache", tmp_path / "models",
                 tmp_path / "metrics")


def _fabricate_results(root):
    rng = np.random.default_rng(1)
    for name in METHODS:
        (root / "logs" / name).mkdir(parents=True)
        with open(root / "logs" / name / "epochs.tsv", "w") as handle:
            handle.write("epoch\ttrain_loss\ttrain_acc\tval_loss\tval_acc\tepoch_time_s\t"
                         "images_per_s\tpeak_memory_mb\tlr\n")
            for epoch in range(1, 4):
                handle.write(f"{epoch}\t{2 / epoch}\t{0.2 * epoch}\t{2.2 / epoch}\t"
                             f"{0.18 * epoch}\t10.5\t300\t1000\t1e-3\n")
        (root / "metrics" / name).mkdir(parents=True)
        (root / "metrics" / name / "train.json").write_text(json.dumps({
            "best_val_acc": 0.54, "best_epoch": 3, "mean_epoch_time_s": 10.5,
            "mean_images_per_s": 300.0, "peak_memory_mb": 1000.0, "device": "cpu",
            "hardware": "2 CPU cores (test)"}))
        (root / "metrics" / name / "eval.json").write_text(json.dumps({
            "accuracy": 0.54, "macro_f1": 0.5, "top5_accuracy": 0.9,
            "zero_shot_accuracy": None}))
        with open(root / "metrics" / name / "predictions.csv", "w") as handle:
            handle.write("actual,predicted\n")
            for _ in range(60):
                handle.write(f"{rng.choice(CLASS_NAMES)},{rng.choice(CLASS_NAMES)}\n")


def test_plot_writes_valid_figures_and_the_studys_tables(tmp_path):
    _fabricate_results(tmp_path)
    plot(PlotConfig(dpi=60), tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert names == sorted([f"{m}_{kind}.png" for m in METHODS for kind in ("curves",
                                                                            "confusion")]
                           + ["compare_speed_memory.png", "compare_val_accuracy.png"])
    for path in (tmp_path / "plots").glob("*.png"):
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert "| Model | Validation Accuracy | Best Epoch | Time per Epoch | Peak Memory" in summary
    for label in ("**CLIP**", "**SigLIP**", "**A-CLIP**"):
        assert f"| {label} | 54.0% | 3 | 10.5 s | 0.98 GB | 300 img/s |" in summary
    epochs = (tmp_path / "plots" / "epochs.md").read_text()
    assert epochs.count("| Epoch | Train Acc | Val Acc | Time (s) | Peak Mem (MB) |") == 3
    assert "| 3 | 0.600 | 0.540 | 10.5 | 1000 |" in epochs


def test_plot_names_a_missing_input_and_its_stage(tmp_path):
    _fabricate_results(tmp_path)
    (tmp_path / "metrics" / "aclip" / "eval.json").unlink()
    with pytest.raises(StageError, match=r"aclip/eval.json: not found; the evaluate@aclip "
                                         r"stage makes it"):
        plot(PlotConfig(), tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")


def test_readme_results_block_is_filled_from_the_summary(tmp_path):
    from harclip.plot import splice_results

    (tmp_path / "summary.md").write_text("| Model |\n| CLIP |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nrest\n")
    splice_results(readme, tmp_path / "summary.md")
    assert readme.read_text() == ("intro\n<!-- results:start -->\n| Model |\n| CLIP |\n"
                                  "<!-- results:end -->\nrest\n")
    readme.write_text("no markers")
    with pytest.raises(StageError, match="no <!-- results:start -->"):
        splice_results(readme, tmp_path / "summary.md")
