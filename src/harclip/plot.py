"""plot stage: the figures and tables people look at after `dvc repro`.

    python -m harclip.plot

Per model: accuracy and loss (cross-entropy, train and val) against epoch, a normalised
confusion matrix on the test split with its most frequent confusions listed beside it, and the
study's per-epoch table. Across models: validation accuracy against epoch on one figure, time
per epoch and peak memory side by side, and the study's summary table with val and test
accuracy (plots/summary.md).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from harclip import records, stage
from harclip.config import LABELS, METHODS, PlotConfig, load_params

TOP_CONFUSIONS = 10


def _read(path: Path, stage_name: str) -> str:
    if not path.is_file():
        raise stage.StageError(f"{path}: not found; the {stage_name} stage makes it "
                               f"(`dvc repro {stage_name}`)")
    return path.read_text()


def read_epochs(logs_dir: Path, name: str) -> list[dict]:
    """A model's epochs, from the per-series files DVCLive wrote during training."""
    try:
        return records.read_epochs(logs_dir / name)
    except FileNotFoundError as err:
        raise stage.StageError(f"{err}; the train_{name} stage makes it "
                               f"(`dvc repro train_{name}`)") from err


def read_json(path: Path, stage_name: str) -> dict:
    return json.loads(_read(path, stage_name))


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


def summary_table(train: dict[str, dict], reports: dict[str, dict]) -> str:
    """The study's summary columns (validation accuracy, as it reported), the held-out test
    accuracy, and steady-state speed and memory."""
    lines = ["| Model | Val Acc | Test Acc | Best Epoch | Time per Epoch | First Epoch | "
             "Peak Memory | Throughput | Test Macro-F1 | Test Top-5 | Zero-shot (test) |",
             "| :-- | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: | :-: |"]
    for name, metrics in train.items():
        scores = reports[name]["scores"]
        held_out = "test" if "test" in scores else "val"
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
            f" | {'—' if held_out not in zero_shot else f'{zero_shot[held_out]:.1%}'} |")
    return "\n".join(lines) + "\n"


def plot(config: PlotConfig, logs_dir: Path = Path("logs"),
         metrics_dir: Path = Path("metrics"), out_dir: Path = Path("plots")) -> None:
    """Write every figure and table into `out_dir`."""
    from harclip import figures

    epochs = {name: read_epochs(logs_dir, name) for name in METHODS}
    train = {name: read_json(logs_dir / name / "run.json", f"train_{name}")
             for name in METHODS}
    reports = {name: read_json(metrics_dir / name / "report.json", f"evaluate@{name}")
               for name in METHODS}
    out_dir.mkdir(parents=True, exist_ok=True)
    confusions = []
    for name in METHODS:
        figures.plot_curves(name, epochs[name], out_dir / f"{name}_curves.png", config.dpi)
        predictions = list(csv.DictReader(_read(metrics_dir / name / "predictions.csv",
                                                f"evaluate@{name}").splitlines()))
        classes, split = reports[name]["classes"], reports[name]["predictions_split"]
        counts = figures.plot_confusion(name, predictions, classes, split,
                                        out_dir / f"{name}_confusion.png", config.dpi)
        confusions.append(confusions_table(name, counts, classes, split))
    hardware = train[METHODS[0]].get("hardware", "unknown hardware")
    figures.plot_val_accuracy(epochs, len(reports[METHODS[0]]["classes"]),
                              out_dir / "compare_val_accuracy.png", config.dpi)
    figures.plot_speed_memory(train, hardware, out_dir / "compare_speed_memory.png", config.dpi)
    if any("wise_ft" in report for report in reports.values()):
        figures.plot_wise_ft(reports, out_dir / "wise_ft.png", config.dpi)
    (out_dir / "epochs.md").write_text("\n".join(epochs_table(n, epochs[n]) for n in METHODS))
    (out_dir / "confusions.md").write_text("\n".join(confusions))
    (out_dir / "summary.md").write_text(summary_table(train, reports)
                                        + f"\nMeasured on {hardware}.\n")
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
