"""evaluate and plot: metrics that agree with scikit-learn, figures and the study's tables."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from dvclive import Live
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score

from harclip.cache import CacheItem, write_cache
from harclip.checkpoints import save_checkpoint
from harclip.config import METHODS, EvaluateConfig, PlotConfig, TrainConfig
from harclip.evaluation import classification_metrics, evaluate
from harclip.har import CLASS_NAMES
from harclip.models import build_model, create_backbone
from harclip.plot import plot
from harclip.records import SERIES
from harclip.stage import StageError


def test_classification_metrics_match_a_hand_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 15, 200)
    logits = rng.normal(size=(200, 15))
    logits[np.arange(100), labels[:100]] += 5  # half of them right
    metrics, per_class = classification_metrics(labels, logits, list(CLASS_NAMES))
    predicted = logits.argmax(1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    hits = [label in best for label, best in zip(labels, top5, strict=True)]
    assert metrics["top5_accuracy"] == pytest.approx(np.mean(hits))
    for index, name in enumerate(CLASS_NAMES):
        mine = labels == index
        assert per_class[name] == pytest.approx(
            np.mean(predicted[mine] == index) if mine.any() else 0.0)
    few, _ = classification_metrics(labels % 4, logits[:, :4], ["a", "b", "c", "d"])
    assert "top5_accuracy" not in few  # with 5 classes or fewer it would always be 1


def _cache(root, n_val=30, n_test=20, size=32):
    rng = np.random.default_rng(0)
    items = [CacheItem(f"{i}.jpg", i % 15, f"h{i}",
                       rng.integers(0, 256, (3, size, size), dtype=np.uint8))
             for i in range(10 + n_val + n_test)]
    split_of = np.array([0] * 10 + [1] * n_val + [2] * n_test)
    write_cache(root, items, split_of, list(CLASS_NAMES), size)


def _checkpoint(models, name, pretrained=None):
    torch.manual_seed(0)
    config = TrainConfig(pretrained=pretrained, head_init="text")
    model, _ = build_model(config)
    from dataclasses import asdict

    save_checkpoint(models / f"{name}.pt", model, config.model, CLASS_NAMES,
                    {"params": asdict(config), "epoch": 2, "val_acc": 0.5})


def test_evaluate_scores_val_and_test_and_agrees_with_sklearn(tmp_path):
    _cache(tmp_path / "cache")
    weights = tmp_path / "backbone.pt"
    torch.save(create_backbone("harclip-tiny-clip", None).state_dict(), weights)
    _checkpoint(tmp_path / "models", "clip", pretrained=str(weights))
    metrics = evaluate("clip", EvaluateConfig(batch_size=7), tmp_path / "cache",
                       tmp_path / "models", tmp_path / "metrics")
    out = tmp_path / "metrics" / "clip"
    saved = json.loads((out / "eval.json").read_text())
    assert saved == {"clip": json.loads(json.dumps(metrics))}  # under the model's name
    assert set(metrics) == {"val_acc", "test_acc", "test_f1", "test_top5"}
    assert all(isinstance(v, float) for v in metrics.values())  # numbers only
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    actual = [r["actual"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    assert len(rows) == 20  # the confusion matrix is on the test split
    assert metrics["test_acc"] == pytest.approx(accuracy_score(actual, predicted))
    assert metrics["test_f1"] == pytest.approx(
        f1_score(actual, predicted, labels=list(CLASS_NAMES), average="macro", zero_division=0))
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == {"val": 30, "test": 20} and report["checkpoint_epoch"] == 2
    assert report["classes"] == list(CLASS_NAMES) and report["predictions_split"] == "test"
    assert set(report["per_class_accuracy"]["test"]) == set(CLASS_NAMES)
    assert report["scores"]["val"]["accuracy"] == metrics["val_acc"]
    # The checkpoint's head was initialised from text and never trained, so the untouched
    # backbone's zero-shot accuracy is the same number.
    for split in ("val", "test"):
        assert report["zero_shot_accuracy"][split] == pytest.approx(metrics[f"{split}_acc"])


def test_without_a_test_split_evaluate_reports_val_alone(tmp_path):
    _cache(tmp_path / "cache", n_test=0)
    _checkpoint(tmp_path / "models", "clip")
    metrics = evaluate("clip", EvaluateConfig(), tmp_path / "cache", tmp_path / "models",
                       tmp_path / "metrics")
    assert set(metrics) == {"val_acc", "val_f1", "val_top5"}
    report = json.loads((tmp_path / "metrics" / "clip" / "report.json").read_text())
    assert report["predictions_split"] == "val"


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


def _fabricate_results(root, classes=CLASS_NAMES):
    """What the training stages (through DVCLive) and the evaluate stages write."""
    rng = np.random.default_rng(1)
    for name in METHODS:
        live = Live(str(root / "logs" / name), dvcyaml=False, save_dvc_exp=False)
        for epoch in range(1, 4):
            live.step = epoch
            values = {"train_loss": 2 / epoch, "train_image_text_loss": 0.0,
                      "train_acc": 0.2 * epoch, "val_loss": 2.2 / epoch,
                      "val_acc": 0.18 * epoch, "epoch_time_s": 10.5,
                      "refresh_time_s": 0.5 if name == "aclip" else 0.0,
                      "images_per_s": 300.0, "peak_memory_mb": 1000.0, "lr": 1e-3,
                      "val_time_s": 0.4, "save_time_s": 0.2}
            for series, field in SERIES.items():
                live.log_metric(series, values[field])
        live.end()
        (root / "logs" / name / "run.json").write_text(json.dumps({
            "best_val_acc": 0.54, "best_epoch": 3, "mean_epoch_time_s": 10.5,
            "first_epoch_time_s": 30.0, "mean_refresh_time_s": 0.0,
            "mean_images_per_s": 300.0, "peak_memory_mb": 1000.0, "device": "cpu",
            "hardware": "2 CPU cores (test)"}))
        (root / "metrics" / name).mkdir(parents=True)
        scores = {"val": {"accuracy": 0.54, "macro_f1": 0.5, "top5_accuracy": 0.9},
                  "test": {"accuracy": 0.51, "macro_f1": 0.49, "top5_accuracy": 0.88}}
        (root / "metrics" / name / "report.json").write_text(json.dumps({
            "classes": list(classes), "predictions_split": "test", "scores": scores}))
        with open(root / "metrics" / name / "predictions.csv", "w") as handle:
            handle.write("actual,predicted\n")
            for _ in range(60):
                handle.write(f"{rng.choice(classes)},{rng.choice(classes)}\n")


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
    assert "| Model | Val Acc | Test Acc | Best Epoch | Time per Epoch | First Epoch" in summary
    for label in ("**CLIP**", "**SigLIP**", "**A-CLIP**"):
        assert f"| {label} | 54.0% | 51.0% | 3 | 10.5 s | 30.0 s | 0.98 GiB | 300 img/s | " \
               f"0.490 | 88.0% | — |" in summary
    assert "Measured on 2 CPU cores (test)." in summary
    epochs = (tmp_path / "plots" / "epochs.md").read_text()
    assert epochs.count("| Epoch | Train Acc | Val Acc | Time (s) |") == 3
    assert "| 3 | 0.600 | 0.540 | 10.5 | 1000 |" in epochs
    assert "| 3 | 0.600 | 0.540 | 10.5 | 0.5 | 1000 |" in epochs  # A-CLIP's refresh column
    confusions = (tmp_path / "plots" / "confusions.md").read_text()
    assert confusions.count("most frequent confusions (test split)") == 3


def test_confusion_figures_grow_with_the_number_of_classes(tmp_path):
    sizes = {}
    for count in (5, 40):
        classes = [f"class_{i:02d}" for i in range(count)]
        root = tmp_path / str(count)
        _fabricate_results(root, classes)
        plot(PlotConfig(dpi=50), root / "logs", root / "metrics", root / "plots")
        with Image.open(root / "plots" / "clip_confusion.png") as image:
            sizes[count] = image.size
        table = (root / "plots" / "confusions.md").read_text().splitlines()
        assert sum(line.startswith("| class_") for line in table) == 3 * 10  # top 10 each
    assert sizes[40][0] > 2 * sizes[5][0] and sizes[40][1] > 2 * sizes[5][1]


def test_plot_names_a_missing_input_and_its_stage(tmp_path):
    _fabricate_results(tmp_path)
    (tmp_path / "metrics" / "aclip" / "report.json").unlink()
    with pytest.raises(StageError, match=r"aclip/report.json: not found; the evaluate@aclip "
                                         r"stage makes it"):
        plot(PlotConfig(), tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")
    shutil.rmtree(tmp_path / "logs" / "sglip" / "plots")
    with pytest.raises(StageError, match=r"sglip/plots/metrics/train/loss.tsv: not found.*"
                                         r"`dvc repro train_sglip`"):
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
