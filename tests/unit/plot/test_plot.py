"""The plot stage: valid figures and the study's tables, confusion figures sized for the number
of classes, a missing input named with its stage, README's results block filled from the
summary."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from dvclive import Live
from PIL import Image

from harclip.config.schema import METHODS, PlotConfig
from harclip.data.layout import CLASS_NAMES
from harclip.data.records import SERIES
from harclip.plot.stage import plot
from harclip.runtime.errors import StageError
from tests.support.params import shipped


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
            "classes": list(classes), "predictions_split": "test", "scores": scores,
            "calibration": {"split": "test", "temperature": 1.4, "ece_before": 0.08,
                            "ece_after": 0.031, "nll_before": 1.2, "nll_after": 1.1,
                            "reliability": {when: {"bins": 15, "confidence": [0.3, 0.9],
                                                   "accuracy": [0.2, 0.8], "images": [20, 40]}
                                            for when in ("before", "after")}},
            "inference": {"device": "2 CPU cores (test)", "batch_size": 256, "img_s": 1234.5,
                          "latency_ms_p50": 2.54, "latency_ms_p95": 3.1}}))
        with open(root / "metrics" / name / "predictions.csv", "w") as handle:
            handle.write("actual,predicted\n")
            for _ in range(60):
                handle.write(f"{rng.choice(classes)},{rng.choice(classes)}\n")


def test_plot_writes_valid_figures_and_the_studys_tables(tmp_path):
    _fabricate_results(tmp_path)
    plot(PlotConfig(dpi=60), tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")
    names = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert names == sorted([f"{m}_{kind}.png" for m in METHODS
                            for kind in ("curves", "confusion", "reliability")]
                           + ["compare_speed_memory.png", "compare_val_accuracy.png"])
    for path in (tmp_path / "plots").glob("*.png"):
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 200
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert "| Model | Val Acc | Test Acc | Best Epoch | Time per Epoch | First Epoch | " \
           "Peak Memory | Training Throughput |" in summary
    assert "| Zero-shot (test) | Shifted test (zero-shot) | Corrupted (test) | Test ECE | " \
           "Inference |" in summary
    for label in ("**CLIP**", "**SigLIP**", "**A-CLIP**"):
        assert f"| {label} | 54.0% | 51.0% | 3 | 10.5 s | 30.0 s | 0.98 GiB | 300 img/s | " \
               f"0.490 | 88.0% | — | — | — | 0.031 | 1,234 img/s, 2.5 ms |" in summary
    assert "Training measured on 2 CPU cores (test). Test ECE: the expected calibration error " \
           "(15 bins) on test after temperature scaling. Inference: images per second at batch " \
           "256 and one image's median latency, on 2 CPU cores (test)." in summary
    epochs = (tmp_path / "plots" / "epochs.md").read_text()
    assert epochs.count("| Epoch | Train Acc | Val Acc | Time (s) |") == 3
    assert "| 3 | 0.600 | 0.540 | 10.5 | 1000 |" in epochs
    assert "| 3 | 0.600 | 0.540 | 10.5 | 0.5 | 1000 |" in epochs  # A-CLIP's refresh column
    confusions = (tmp_path / "plots" / "confusions.md").read_text()
    assert confusions.count("most frequent confusions (test split)") == 3


def test_corruptions_get_a_figure_and_the_summary_their_mean(tmp_path):
    _fabricate_results(tmp_path)
    for name, drop in zip(METHODS, (0.1, 0.2, 0.3), strict=True):
        path = tmp_path / "metrics" / name / "report.json"
        report = json.loads(path.read_text())
        report["corruptions"] = {c: {str(s): 0.51 - drop * s / 5 for s in (1, 3, 5)}
                                 for c in ("jpeg", "gaussian_blur")}
        report["corruptions_split"] = "test"
        path.write_text(json.dumps(report))
    plot(PlotConfig(dpi=60), tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")
    with Image.open(tmp_path / "plots" / "corruptions.png") as image:
        image.verify()
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert "| 88.0% | — | — | 45.0% | 0.031 |" in summary  # CLIP: 0.51 − 0.1 × mean(1, 3, 5) / 5
    assert "| 88.0% | — | — | 33.0% | 0.031 |" in summary  # A-CLIP
    assert "Corrupted: the mean accuracy over jpeg, gaussian_blur at severities 1, 3, 5 " \
           "(plots/corruptions.png)." in summary


def _with_shift(report: dict, held_out: str = "test") -> dict:
    report["scores"]["shift"] = {"accuracy": 0.42, "macro_f1": 0.4}
    report["zero_shot_accuracy"] = {"val": 0.3, held_out: 0.3, "shift": 0.33}
    report["wise_ft"] = {f"{a:g}": {"val": 0.3 + 0.2 * a, held_out: 0.3 + 0.2 * a,
                                    "shift": 0.33 + 0.3 * a * (1 - a) + 0.09 * a}
                         for a in (1.0, 0.0, 0.5)}  # as listed, not sorted
    report["shift"] = {"accuracy": 0.42, "zero_shot_accuracy": 0.33,
                       "wise_alpha_best_on_shift": 0.5}
    return report


def test_a_shift_split_gets_wise_fts_frontier_and_a_summary_column(tmp_path):
    _fabricate_results(tmp_path)
    for name in METHODS:
        path = tmp_path / "metrics" / name / "report.json"
        report = json.loads(path.read_text())
        if name == "aclip":  # scored without a shift split: no panel, no column
            report["wise_ft"] = {"0": {"val": 0.3, "test": 0.3}, "1": {"val": 0.5, "test": 0.5}}
        path.write_text(json.dumps(report if name == "aclip" else _with_shift(report)))
    plot(PlotConfig(dpi=60), tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")
    with Image.open(tmp_path / "plots" / "wise_ft_frontier.png") as image:
        image.verify()
        assert 1.8 < image.size[0] / image.size[1] < 2.2  # two panels side by side, not three
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert summary.count("| 30.0% | 42.0% (33.0%) | — | 0.031 |") == 2
    assert "| **A-CLIP** |" in summary and "| 88.0% | — | — | — | 0.031 |" in summary
    assert "Shifted test: accuracy on the shift split" in summary


def test_the_frontier_without_a_test_split_plots_val_against_the_shift(tmp_path):
    _fabricate_results(tmp_path)
    for name in METHODS:
        path = tmp_path / "metrics" / name / "report.json"
        report = json.loads(path.read_text())
        del report["scores"]["test"]
        path.write_text(json.dumps(_with_shift(report, held_out="val")))
    plot(PlotConfig(dpi=60), tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")
    with Image.open(tmp_path / "plots" / "wise_ft_frontier.png") as image:
        image.verify()
        assert 2.7 < image.size[0] / image.size[1] < 3.3


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
        plot(shipped().plot, tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")
    shutil.rmtree(tmp_path / "logs" / "sglip" / "plots")
    with pytest.raises(StageError, match=r"sglip/plots/metrics/train/loss.tsv: not found.*"
                                         r"`dvc repro train_sglip`"):
        plot(shipped().plot, tmp_path / "logs", tmp_path / "metrics", tmp_path / "plots")


def test_readme_results_block_is_filled_from_the_summary(tmp_path):
    from harclip.plot.tables import splice_results

    (tmp_path / "summary.md").write_text("| Model |\n| CLIP |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nrest\n")
    splice_results(readme, tmp_path / "summary.md")
    assert readme.read_text() == ("intro\n<!-- results:start -->\n| Model |\n| CLIP |\n"
                                  "<!-- results:end -->\nrest\n")
    readme.write_text("no markers")
    with pytest.raises(StageError, match="no <!-- results:start -->"):
        splice_results(readme, tmp_path / "summary.md")
