"""plot stage: the figures and tables people look at after `dvc repro`.

    python -m harclip.plot

Per model: accuracy and loss against epoch, a normalised confusion matrix and the study's
per-epoch table. Across models: validation accuracy against epoch on one figure, time per
epoch and peak memory side by side, and the study's summary table (plots/summary.md).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

from harclip import stage
from harclip.config import PlotConfig, load_params
from harclip.har import CLASS_NAMES
from harclip.train import METHODS

LABELS = {"clip": "CLIP", "sglip": "SigLIP", "aclip": "A-CLIP"}
COLOURS = {"clip": "#1f77b4", "sglip": "#d62728", "aclip": "#2ca02c"}


def _read(path: Path, stage_name: str) -> str:
    if not path.is_file():
        raise stage.StageError(f"{path}: not found; the {stage_name} stage makes it "
                               f"(`dvc repro {stage_name}`)")
    return path.read_text()


def read_epochs(logs_dir: Path, name: str) -> list[dict]:
    text = _read(logs_dir / name / "epochs.tsv", f"train_{name}")
    return [{key: float(value) for key, value in row.items()}
            for row in csv.DictReader(text.splitlines(), delimiter="\t")]


def read_json(path: Path, stage_name: str) -> dict:
    return json.loads(_read(path, stage_name))


def plot_curves(name: str, epochs: list[dict], path: Path, dpi: int) -> None:
    x = [row["epoch"] for row in epochs]
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    for split, style in (("train", "--"), ("val", "-")):
        acc.plot(x, [row[f"{split}_acc"] for row in epochs], style, marker="o", label=split,
                 color=COLOURS[name])
        loss.plot(x, [row[f"{split}_loss"] for row in epochs], style, marker="o", label=split,
                  color=COLOURS[name])
    acc.set(title=f"{LABELS[name]}: accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    loss.set(title=f"{LABELS[name]}: loss", xlabel="epoch", ylabel="cross-entropy")
    for axis in (acc, loss):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.savefig(path, dpi=dpi)


def plot_confusion(name: str, predictions: list[dict], path: Path, dpi: int) -> None:
    names = list(CLASS_NAMES)
    matrix = confusion_matrix([r["actual"] for r in predictions],
                              [r["predicted"] for r in predictions], labels=names,
                              normalize="true")
    fig = Figure(figsize=(9, 8), layout="constrained")
    axis = fig.subplots()
    display = ConfusionMatrixDisplay(matrix, display_labels=[n.replace("_", " ") for n in names])
    display.plot(ax=axis, cmap="Blues", values_format=".2f", colorbar=True,
                 xticks_rotation=45, text_kw={"fontsize": 7})
    for label in axis.get_xticklabels():
        label.set(horizontalalignment="right", rotation_mode="anchor")
    accuracy = np.mean([r["actual"] == r["predicted"] for r in predictions])
    axis.set_title(f"{LABELS[name]}: confusion matrix, rows normalised "
                   f"(accuracy {accuracy:.1%}, {len(predictions)} val images)")
    fig.savefig(path, dpi=dpi)


def plot_val_accuracy(epochs: dict[str, list[dict]], path: Path, dpi: int) -> None:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    axis = fig.subplots()
    for name, rows in epochs.items():
        axis.plot([r["epoch"] for r in rows], [r["val_acc"] for r in rows], marker="o",
                  label=LABELS[name], color=COLOURS[name])
    axis.axhline(1 / len(CLASS_NAMES), color="grey", linestyle=":", label="chance")
    axis.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend()
    fig.savefig(path, dpi=dpi)


def plot_speed_memory(train: dict[str, dict], path: Path, dpi: int) -> None:
    names = list(train)
    fig = Figure(figsize=(10, 4), layout="constrained")
    speed, memory = fig.subplots(1, 2)
    colours = [COLOURS[n] for n in names]
    labels = [LABELS[n] for n in names]
    for axis, key, title, unit in (
            (speed, "mean_epoch_time_s", "Time per epoch", "seconds"),
            (memory, "peak_memory_mb", "Peak memory", "MB")):
        values = [train[n][key] for n in names]
        bars = axis.bar(labels, values, color=colours)
        axis.bar_label(bars, fmt="%.1f" if key.endswith("_s") else "%.0f")
        axis.set(title=title, ylabel=unit)
        axis.grid(axis="y", alpha=0.3)
    fig.suptitle(f"on {train[names[0]].get('hardware', 'unknown hardware')}", fontsize=8)
    fig.savefig(path, dpi=dpi)


def epochs_table(name: str, epochs: list[dict]) -> str:
    """The study's per-epoch table."""
    lines = [f"### {LABELS[name]}", "",
             "| Epoch | Train Acc | Val Acc | Time (s) | Peak Mem (MB) |",
             "|:------|:----------|:--------|:---------|:--------------|"]
    lines += [f"| {int(r['epoch'])} | {r['train_acc']:.3f} | {r['val_acc']:.3f} | "
              f"{r['epoch_time_s']:.1f} | {r['peak_memory_mb']:.0f} |" for r in epochs]
    return "\n".join(lines) + "\n"


def summary_table(train: dict[str, dict], evaluation: dict[str, dict]) -> str:
    """The study's summary columns, plus throughput, macro-F1 and the hardware."""
    lines = ["| Model | Validation Accuracy | Best Epoch | Time per Epoch | Peak Memory | "
             "Throughput | Macro-F1 | Top-5 | Zero-shot | Hardware |",
             "| :-- | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-- |"]
    for name, metrics in train.items():
        scores = evaluation[name]
        zero_shot = scores["zero_shot_accuracy"]
        lines.append(
            f"| **{LABELS[name]}** | {scores['accuracy']:.1%} | {metrics['best_epoch']} | "
            f"{metrics['mean_epoch_time_s']:.1f} s | {metrics['peak_memory_mb'] / 1024:.2f} GB"
            f" | {metrics['mean_images_per_s']:.0f} img/s | {scores['macro_f1']:.3f} | "
            f"{scores['top5_accuracy']:.1%} | "
            f"{'—' if zero_shot is None else f'{zero_shot:.1%}'} | "
            f"{metrics.get('hardware', metrics['device'])} |")
    return "\n".join(lines) + "\n"


def plot(config: PlotConfig, logs_dir: Path = Path("logs"),
         metrics_dir: Path = Path("metrics"), out_dir: Path = Path("plots")) -> None:
    """Write every figure and table into `out_dir`."""
    epochs = {name: read_epochs(logs_dir, name) for name in METHODS}
    train = {name: read_json(metrics_dir / name / "train.json", f"train_{name}")
             for name in METHODS}
    evaluation = {name: read_json(metrics_dir / name / "eval.json", f"evaluate@{name}")
                  for name in METHODS}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in METHODS:
        plot_curves(name, epochs[name], out_dir / f"{name}_curves.png", config.dpi)
        predictions = list(csv.DictReader(_read(metrics_dir / name / "predictions.csv",
                                                f"evaluate@{name}").splitlines()))
        plot_confusion(name, predictions, out_dir / f"{name}_confusion.png", config.dpi)
    plot_val_accuracy(epochs, out_dir / "compare_val_accuracy.png", config.dpi)
    plot_speed_memory(train, out_dir / "compare_speed_memory.png", config.dpi)
    (out_dir / "epochs.md").write_text("\n".join(epochs_table(n, epochs[n]) for n in METHODS))
    (out_dir / "summary.md").write_text(summary_table(train, evaluation))
    stage.log.info("plot: figures and tables in %s", out_dir)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def splice_results(readme: Path, summary: Path) -> None:
    """Copy plots/summary.md between the README's results markers, so it is never typed."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise stage.StageError(f"{readme}: no {README_START} … {README_END} block to fill")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    table = _read(summary, "plot")
    readme.write_text(f"{head}{README_START}\n{table}{README_END}{tail}")


def main() -> None:
    cli = stage.parser("Draw per-model curves and confusion matrices, the cross-model "
                       "comparison and the study's tables into plots/.")
    cli.add_argument("--update-readme", type=Path, metavar="README",
                     help="only copy plots/summary.md into README's results block and stop")
    args = cli.parse_args()
    if args.update_readme:
        stage.run(lambda: splice_results(args.update_readme, Path("plots/summary.md")))
    else:
        stage.run(lambda: plot(load_params(args.params).plot))


if __name__ == "__main__":
    main()
