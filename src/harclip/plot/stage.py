"""The plot stage's work: the figures and tables people look at after `dvc repro`.

Per model: accuracy and loss (cross-entropy, train and val) against epoch, a normalised
confusion matrix on the test split with its most frequent confusions listed beside it, and the
study's per-epoch table. Across models: validation accuracy against epoch on one figure, time
per epoch and peak memory side by side, accuracy under common corruptions against their
severity, WiSE-FT's curve against α and, with a shift split, its frontier (in-distribution
against shifted test accuracy), and the study's summary table with val and test accuracy
(plots/summary.md).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from harclip.config.schema import METHODS, PlotConfig
from harclip.data import records
from harclip.data.layout import SHIFT_SPLIT
from harclip.plot import figures
from harclip.plot.tables import confusions_table, epochs_table, measured_on, summary_table
from harclip.runtime.errors import StageError
from harclip.runtime.log import log


def _read(path: Path, stage_name: str) -> str:
    if not path.is_file():
        raise StageError(f"{path}: not found; the {stage_name} stage makes it "
                         f"(`dvc repro {stage_name}`)")
    return path.read_text()


def read_epochs(logs_dir: Path, name: str) -> list[dict]:
    """A model's epochs, from the per-series files DVCLive wrote during training."""
    try:
        return records.read_epochs(logs_dir / name)
    except FileNotFoundError as err:
        raise StageError(f"{err}; the train_{name} stage makes it "
                         f"(`dvc repro train_{name}`)") from err


def read_json(path: Path, stage_name: str) -> dict:
    return json.loads(_read(path, stage_name))


def plot(config: PlotConfig, logs_dir: Path = Path("logs"),
         metrics_dir: Path = Path("metrics"), out_dir: Path = Path("plots")) -> None:
    """Write every figure and table into `out_dir`."""
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
        if "calibration" in reports[name]:
            figures.plot_reliability(name, reports[name]["calibration"],
                                     out_dir / f"{name}_reliability.png", config.dpi)
    hardware = train[METHODS[0]].get("hardware", "unknown hardware")
    figures.plot_val_accuracy(epochs, len(reports[METHODS[0]]["classes"]),
                              out_dir / "compare_val_accuracy.png", config.dpi)
    figures.plot_speed_memory(train, hardware, out_dir / "compare_speed_memory.png", config.dpi)
    if any(report.get("corruptions") for report in reports.values()):
        figures.plot_corruptions(reports, out_dir / "corruptions.png", config.dpi)
    if any("wise_ft" in report for report in reports.values()):
        figures.plot_wise_ft(reports, out_dir / "wise_ft.png", config.dpi)
    if any(SHIFT_SPLIT in report.get("scores", {}) and "wise_ft" in report
           for report in reports.values()):
        figures.plot_wise_ft_frontier(reports, SHIFT_SPLIT, out_dir / "wise_ft_frontier.png",
                                      config.dpi)
    (out_dir / "epochs.md").write_text("\n".join(epochs_table(n, epochs[n]) for n in METHODS))
    (out_dir / "confusions.md").write_text("\n".join(confusions))
    (out_dir / "summary.md").write_text(summary_table(train, reports) + "\n"
                                        + measured_on(hardware, reports))
    log.info("plot: figures and tables in %s", out_dir)
