"""The plot stage's markdown tables: the study's per-epoch and summary tables, the most
frequent confusions, and the README's results block filled from the summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harclip.config.schema import LABELS
from harclip.data.layout import held_out_split
from harclip.runtime.errors import StageError

TOP_CONFUSIONS = 10


def confusions_table(name: str, counts: np.ndarray, class_names: list[str], split: str) -> str:
    """The most frequent confusions as text: at 40 classes the figure's cells are too small to
    read, a list is not."""
    rows = counts.sum(axis=1)
    pairs = sorted(((counts[a, p], a, p) for a in range(len(class_names))
                    for p in range(len(class_names)) if a != p and counts[a, p]), reverse=True)
    lines = [f"### {LABELS[name]}: most frequent confusions ({split} split)", "",
             "| Actual | Predicted as | Images | Share of the class |",
             "| :-- | :-- | --: | --: |"]
    lines += [f"| {class_names[a]} | {class_names[p]} | {n} | {n / rows[a]:.1%} |"
              for n, a, p in pairs[:TOP_CONFUSIONS]]
    if not pairs:
        lines.append("| — | — | 0 | — |")
    return "\n".join(lines) + "\n"


def epochs_table(name: str, epochs: list[dict]) -> str:
    """The study's per-epoch table, plus the saliency refresh where there is one and the
    end-of-epoch saves (checkpoint, resume state), which fall outside the epoch time."""
    refresh = any(r["refresh_time_s"] for r in epochs)
    lines = [f"### {LABELS[name]}", "",
             "| Epoch | Train Acc | Val Acc | Time (s) |" + (" of which refresh (s) |" if refresh
                                                             else "")
             + " Peak Mem (MB) | Save (s) |",
             "|:------|:----------|:--------|:---------|" + (":--|" if refresh else "")
             + ":--------------|:--|"]
    lines += [f"| {int(r['epoch'])} | {r['train_acc']:.3f} | {r['val_acc']:.3f} | "
              f"{r['epoch_time_s']:.1f} |" + (f" {r['refresh_time_s']:.1f} |" if refresh else "")
              + f" {r['peak_memory_mb']:.0f} | {r['save_time_s']:.2f} |" for r in epochs]
    return "\n".join(lines) + "\n"


def _percent(scores: dict, split: str, key: str = "accuracy") -> str:
    value = scores.get(split, {}).get(key)
    return "—" if value is None else f"{value:.1%}"


def _calibration(report: dict) -> str:
    calibration = report.get("calibration")
    return "—" if calibration is None else f"{calibration['ece_after']:.3f}"


def _corrupted(report: dict) -> str:
    curves = report.get("corruptions")
    return "—" if not curves else \
        f"{np.mean([a for by_severity in curves.values() for a in by_severity.values()]):.1%}"


def _shifted(report: dict) -> str:
    """The shift split's accuracy, its zero-shot start's in brackets; — without one."""
    shift = report.get("shift")
    if shift is None:
        return "—"
    zero_shot = shift.get("zero_shot_accuracy")
    return f"{shift['accuracy']:.1%}" + ("" if zero_shot is None else f" ({zero_shot:.1%})")


def _inference(report: dict) -> str:
    inference = report.get("inference")
    return "—" if inference is None else \
        f"{inference['img_s']:,.0f} img/s, {inference['latency_ms_p50']:.1f} ms"


def summary_table(train: dict[str, dict], reports: dict[str, dict]) -> str:
    """The study's summary columns (validation accuracy, as it reported), the held-out test
    accuracy, steady-state training speed and memory, and what the user weighs next: the
    accuracy on a shifted test split and under common corruptions, the calibration error
    after temperature scaling and what inference costs."""
    lines = ["| Model | Val Acc | Test Acc | Best Epoch | Time per Epoch | First Epoch | "
             "Peak Memory | Training Throughput | Test Macro-F1 | Test Top-5 | Zero-shot (test) | "
             "Shifted test (zero-shot) | Corrupted (test) | Test ECE | Inference |",
             "| :-- | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: "
             "| :-: | :-: |"]
    for name, metrics in train.items():
        scores = reports[name]["scores"]
        held_out = held_out_split(scores)
        zero_shot = reports[name].get("zero_shot_accuracy", {})
        refresh = metrics.get("mean_refresh_time_s", 0.0)
        lines.append(
            f"| **{LABELS[name]}** | {_percent(scores, 'val')} | {_percent(scores, 'test')} | "
            f"{metrics['best_epoch']} | {metrics['mean_epoch_time_s']:.1f} s"
            + (f" (refresh {refresh:.1f} s)" if refresh else "")
            + f" | {metrics['first_epoch_time_s']:.1f} s | "
            f"{metrics['peak_memory_mb'] / 1024:.2f} GiB | "
            f"{metrics['mean_images_per_s']:.0f} img/s | "
            f"{scores[held_out]['macro_f1']:.3f} | {_percent(scores, held_out, 'top5_accuracy')}"
            f" | {'—' if held_out not in zero_shot else f'{zero_shot[held_out]:.1%}'} | "
            f"{_shifted(reports[name])} | {_corrupted(reports[name])} | "
            f"{_calibration(reports[name])} | "
            f"{_inference(reports[name])} |")
    return "\n".join(lines) + "\n"


def measured_on(hardware: str, reports: dict[str, dict]) -> str:
    """The table's footnote: what the columns measured, training on which hardware, and
    inference at which batch size on which devices."""
    timed = {(r["inference"]["batch_size"], r["inference"]["device"]) for r in reports.values()
             if "inference" in r}
    batches = " or ".join(sorted({str(batch) for batch, _ in timed}))
    devices = "; ".join(sorted({device for _, device in timed}))
    corrupted = next((r for r in reports.values() if r.get("corruptions")), None)
    corruptions = "" if corrupted is None else \
        f" Corrupted: the mean accuracy over {', '.join(corrupted['corruptions'])} at " \
        f"severities {', '.join(next(iter(corrupted['corruptions'].values())))} " \
        f"(plots/corruptions.png)."
    shifted = "" if not any("shift" in r for r in reports.values()) else \
        " Shifted test: accuracy on the shift split (the same actions in a style no training " \
        "image has), the zero-shot start's in brackets (plots/wise_ft_frontier.png)."
    inference = "" if not timed else \
        f" Test ECE: the expected calibration error (15 bins) on test after temperature " \
        f"scaling. Inference: images per second at batch {batches} and one image's median " \
        f"latency, on {devices}."
    return f"Training measured on {hardware}.{shifted}{corruptions}{inference}\n"


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def splice_results(readme: Path, summary: Path) -> None:
    """Copy plots/summary.md between the README's results markers, so it is never typed."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise StageError(f"{readme}: no {README_START} … {README_END} block to fill")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    if not summary.is_file():
        raise StageError(f"{summary}: not found; the plot stage makes it (`dvc repro plot`)")
    table = summary.read_text()
    readme.write_text(f"{head}{README_START}\n{table}{README_END}{tail}")
