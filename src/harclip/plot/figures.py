"""The figures of the plot stage (matplotlib, imported only by the stage that draws)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from harclip.config.schema import LABELS
from harclip.data.layout import held_out_split

COLOURS = {"clip": "#1f77b4", "sglip": "#d62728", "aclip": "#2ca02c"}
CELL_VALUES_UP_TO = 25
"""Classes up to which confusion-matrix cells carry their value; beyond, colour only."""


def plot_curves(name: str, epochs: list[dict], path: Path, dpi: int) -> None:
    x = [row["epoch"] for row in epochs]
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc, loss = fig.subplots(1, 2)
    for split, style in (("train", "--"), ("val", "-")):
        acc.plot(x, [row[f"{split}_acc"] for row in epochs], style, marker="o", label=split,
                 color=COLOURS[name])
        loss.plot(x, [row[f"{split}_loss"] for row in epochs], style, marker="o", label=split,
                  color=COLOURS[name])
    if any(row.get("ema_val_acc") is not None for row in epochs):
        acc.plot(x, [row.get("ema_val_acc") for row in epochs], ":", marker="s",
                 color=COLOURS[name], label="val, weights' EMA")
    if any(row["train_image_text_loss"] for row in epochs):
        loss.plot(x, [row["train_image_text_loss"] for row in epochs], ":", marker=".",
                  color="grey", label="train image–text term")
    acc.set(title=f"{LABELS[name]}: accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    loss.set(title=f"{LABELS[name]}: loss", xlabel="epoch", ylabel="cross-entropy")
    for axis in (acc, loss):
        axis.grid(alpha=0.3)
        axis.legend()
    fig.savefig(path, dpi=dpi)


def plot_confusion(name: str, predictions: list[dict], class_names: list[str], split: str,
                   path: Path, dpi: int) -> np.ndarray:
    """The row-normalised confusion matrix, sized for the number of classes; returns the
    matrix of counts."""
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    counts = confusion_matrix([r["actual"] for r in predictions],
                              [r["predicted"] for r in predictions], labels=class_names)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    classes = len(class_names)
    side = max(6.0, 0.45 * classes + 3)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    axis = fig.subplots()
    display = ConfusionMatrixDisplay(normalised,
                                     display_labels=[n.replace("_", " ") for n in class_names])
    display.plot(ax=axis, cmap="Blues", colorbar=True, xticks_rotation=45,
                 include_values=classes <= CELL_VALUES_UP_TO, values_format=".2f",
                 text_kw={"fontsize": 7 if classes <= 15 else 5})
    tick_size = 10 if classes <= 15 else max(5, 10 - classes // 10)
    for label in axis.get_xticklabels():
        label.set(horizontalalignment="right", rotation_mode="anchor", fontsize=tick_size)
    for label in axis.get_yticklabels():
        label.set(fontsize=tick_size)
    accuracy = np.mean([r["actual"] == r["predicted"] for r in predictions])
    axis.set_title(f"{LABELS[name]}: confusion matrix, rows normalised "
                   f"(accuracy {accuracy:.1%}, {len(predictions)} {split} images)")
    fig.savefig(path, dpi=dpi)
    return counts


def plot_val_accuracy(epochs: dict[str, list[dict]], classes: int, path: Path,
                      dpi: int) -> None:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    axis = fig.subplots()
    for name, rows in epochs.items():
        axis.plot([r["epoch"] for r in rows], [r["val_acc"] for r in rows], marker="o",
                  label=LABELS[name], color=COLOURS[name])
    axis.axhline(1 / classes, color="grey", linestyle=":", label="chance")
    axis.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend()
    fig.savefig(path, dpi=dpi)


def plot_speed_memory(train: dict[str, dict], hardware: str, path: Path, dpi: int) -> None:
    names = list(train)
    fig = Figure(figsize=(10, 4), layout="constrained")
    speed, memory = fig.subplots(1, 2)
    colours = [COLOURS[n] for n in names]
    labels = [LABELS[n] for n in names]
    for axis, key, title, unit in (
            (speed, "mean_epoch_time_s", "Time per epoch (steady state)", "seconds"),
            (memory, "peak_memory_mb", "Peak memory above the image cache", "MB")):
        values = [train[n][key] for n in names]
        bars = axis.bar(labels, values, color=colours)
        axis.bar_label(bars, fmt="%.1f" if key.endswith("_s") else "%.0f")
        axis.set(title=title, ylabel=unit)
        axis.grid(axis="y", alpha=0.3)
    fig.suptitle(f"on {hardware}", fontsize=8)
    fig.savefig(path, dpi=dpi)


def plot_wise_ft(reports: dict[str, dict], path: Path, dpi: int) -> None:
    """WiSE-FT: accuracy against the mixing weight α (0: the zero-shot model, 1: the
    fine-tuned one) per model, the held-out split solid and val dashed, α chosen on val
    marked."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    axis = fig.subplots()
    for name, report in reports.items():
        curve = report.get("wise_ft")
        if not curve:
            continue
        alphas = [float(a) for a in curve]
        held_out = held_out_split(next(iter(curve.values())))
        for split, style in [(held_out, "-")] + ([("val", "--")] if held_out != "val" else []):
            axis.plot(alphas, [curve[a][split] for a in curve], style, marker="o",
                      color=COLOURS[name], label=f"{LABELS[name]} ({split})")
        chosen = max(curve, key=lambda a: curve[a]["val"])
        axis.plot([float(chosen)], [curve[chosen][held_out]], "*", markersize=14,
                  color=COLOURS[name])
    axis.set(title="WiSE-FT: zero-shot (α = 0) to fine-tuned (α = 1) weights; ★ α chosen "
                   "on val", xlabel="α", ylabel="accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.savefig(path, dpi=dpi)


def plot_wise_ft_frontier(reports: dict[str, dict], split: str, path: Path, dpi: int) -> None:
    """WiSE-FT's own figure, a panel per model with the `split` (shifted) test scored:
    in-distribution held-out accuracy (test, else val) against the shifted split's along α,
    the straight line between α 0 and α 1 (the linear trade-off between the two models: a curve
    above it gains on the shift more than it gives up in distribution), ★ the α chosen on val,
    ◆ the α best on the shift (reported, never chosen by)."""
    curves = {name: report["wise_ft"] for name, report in reports.items()
              if report.get("wise_ft") and split in next(iter(report["wise_ft"].values()))}
    fig = Figure(figsize=(4.2 * len(curves), 4.2), layout="constrained")
    for axis, (name, curve) in zip(np.atleast_1d(fig.subplots(1, len(curves))), curves.items(),
                                   strict=True):
        alphas = sorted(curve, key=float)
        held_out = held_out_split(curve[alphas[0]])
        x, y = ([curve[a][key] for a in alphas] for key in (held_out, split))
        axis.plot(x, y, marker="o", color=COLOURS[name], label="α, in order")
        if {"0", "1"} <= set(alphas):
            axis.plot([curve["0"][held_out], curve["1"][held_out]],
                      [curve["0"][split], curve["1"][split]], ":", color="#7f7f7f",
                      label="α 0 to α 1, straight")
        for alpha, at_x, at_y in zip(alphas, x, y, strict=True):
            axis.annotate(f"α {alpha}", (at_x, at_y), textcoords="offset points",
                          xytext=(4, -10), fontsize=7)
        for by, marker, label in (("val", "*", "chosen on val"),
                                  (split, "D", "best on the shift")):
            best = max(alphas, key=lambda a, by=by, curve=curve: curve[a][by])
            axis.plot([curve[best][held_out]], [curve[best][split]], marker, markersize=11,
                      color=COLOURS[name], markerfacecolor="none", label=f"α {best}: {label}")
        axis.set(title=f"{LABELS[name]}", xlabel=f"{held_out} accuracy (in distribution)",
                 ylabel=f"{split} test accuracy")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    fig.suptitle("WiSE-FT: zero-shot (α 0) to fine-tuned (α 1) weights, in distribution "
                 "against under shift")
    fig.savefig(path, dpi=dpi)


def plot_corruptions(reports: dict[str, dict], path: Path, dpi: int) -> None:
    """Accuracy against corruption severity, a panel per corruption and one for their mean,
    a line per model; severity 0 is the clean split."""
    corrupted = {name: report for name, report in reports.items() if report.get("corruptions")}
    first = next(iter(corrupted.values()))
    panels = [*first["corruptions"], "mean"]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(3.2 * columns, 2.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, sharex=True, sharey=True)).ravel()
    for axis, panel in zip(axes, panels, strict=False):
        for name, report in corrupted.items():
            clean = report["scores"][report["corruptions_split"]]["accuracy"]
            curves = report["corruptions"]
            severities = list(next(iter(curves.values())))
            accuracy = [np.mean([curves[c][s] for c in curves]) if panel == "mean"
                        else curves[panel][s] for s in severities]
            axis.plot([0, *map(int, severities)], [clean, *accuracy], marker="o",
                      color=COLOURS[name], label=LABELS[name])
        axis.axhline(1 / len(first["classes"]), color="#7f7f7f", linestyle=":",
                     label="chance")
        axis.set(title=panel.replace("_", " "), ylim=(0, 1), xticks=range(6))
        axis.grid(alpha=0.3)
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    for axis in axes[::columns]:
        axis.set(ylabel="accuracy")
    for axis in axes[(rows - 1) * columns:]:
        axis.set(xlabel="severity (0: clean)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Common corruptions of the {first['corruptions_split']} split "
                 f"(ImageNet-C's families, albumentations)")
    fig.savefig(path, dpi=dpi)


def plot_reliability(name: str, calibration: dict, path: Path, dpi: int) -> None:
    """The reliability diagram before and after the temperature: each bin of the top-1
    confidence with its accuracy (bars), the gap to its mean confidence (red), the diagonal
    where the two are equal, and each bin's share of the images (grey, beneath)."""
    fig = Figure(figsize=(10, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for axis, when in zip(axes, ("before", "after"), strict=True):
        bins = calibration["reliability"][when]
        width = 1 / bins["bins"]
        confidence, accuracy = np.asarray(bins["confidence"]), np.asarray(bins["accuracy"])
        left = np.minimum(np.floor(confidence * bins["bins"]), bins["bins"] - 1) * width
        share = np.asarray(bins["images"]) / max(1, sum(bins["images"]))
        axis.bar(left, accuracy, width=width, align="edge", color=COLOURS[name], alpha=0.85,
                 edgecolor="white", label="accuracy in the bin")
        axis.bar(left, np.abs(confidence - accuracy), bottom=np.minimum(confidence, accuracy),
                 width=width, align="edge", color="#d62728", alpha=0.3, edgecolor="#d62728",
                 label="gap to its mean confidence")
        axis.bar(left, share, width=width, align="edge", color="grey", alpha=0.5,
                 label="share of the images")
        axis.plot([0, 1], [0, 1], ":", color="black", label="calibrated")
        temperature = "" if when == "before" else f", T = {calibration['temperature']:.2f}"
        axis.set(title=f"{LABELS[name]} {when} temperature scaling{temperature}\n"
                       f"ECE {calibration[f'ece_{when}']:.3f}, NLL "
                       f"{calibration[f'nll_{when}']:.3f} ({calibration['split']} split)",
                 xlabel="top-1 confidence", xlim=(0, 1), ylim=(0, 1))
        axis.grid(alpha=0.3)
    axes[0].set(ylabel="accuracy")
    axes[0].legend(loc="upper left", fontsize="small")
    fig.savefig(path, dpi=dpi)
