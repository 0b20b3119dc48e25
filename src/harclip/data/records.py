"""What a training run leaves in logs/<method>/, and reading it back (no torch; the training
stage writes it with `harclip.train.run_log`).

DVCLive writes the per-epoch series (step = epoch), one file per quantity under
`plots/metrics/` (`dvc plots` overlays the three models from them), the params in
`params.yaml` and the summary in `metrics.json`: the stage's metrics, updated every epoch so
`dvc exp show` follows a running experiment. harclip writes `train.log` (the console's epoch
lines) and `run.json` (the run's description and timing summary: not metrics, so strings and
hardware stay out of `dvc exp show`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

SERIES = {
    "train/loss": "train_loss",
    "train/image_text_loss": "train_image_text_loss",
    "train/acc": "train_acc",
    "val/loss": "val_loss",
    "val/acc": "val_acc",
    "time/epoch_s": "epoch_time_s",
    "time/refresh_s": "refresh_time_s",
    "time/val_s": "val_time_s",
    "time/save_s": "save_time_s",
    "speed/img_s": "images_per_s",
    "memory/peak_mb": "peak_memory_mb",
    "lr": "lr",
}
"""DVCLive's name of each per-epoch series → the EpochRecord field it logs. Both losses named
`loss` are the class head's cross-entropy; the image–text term has its own series."""
OPTIONAL_SERIES = {"val/ema_loss": "ema_val_loss", "val/ema_acc": "ema_val_acc"}
"""Series only some runs log (the weights' EMA, with `ema_decay`)."""

HEADLINE = ("best_epoch", "epoch_s", "img_s", "peak_mb", "trainable")
"""The summary keys, under the model's name so the three models' columns in `dvc exp show`
are told apart without their file paths."""


def series_file(log_dir: Path, name: str) -> Path:
    return log_dir / "plots" / "metrics" / f"{name}.tsv"


def read_epochs(log_dir: Path) -> list[dict]:
    """The run's epochs as EpochRecord-like dicts (`epoch`, every SERIES field and the
    OPTIONAL_SERIES fields the run logged), merged from DVCLive's per-series files by step."""
    epochs: dict[int, dict] = {}
    for name, field in (SERIES | OPTIONAL_SERIES).items():
        path = series_file(log_dir, name)
        if not path.is_file() and name in OPTIONAL_SERIES:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; the training stage writes it")
        value_column = name.rsplit("/", 1)[-1]
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                step = int(row["step"])
                epochs.setdefault(step, {"epoch": step})[field] = float(row[value_column])
    return [epochs[step] for step in sorted(epochs)]


def read_run(log_dir: Path) -> dict:
    """What run.json says of the run (model, hardware, timing summary, best epoch)."""
    path = log_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the training stage writes it")
    return json.loads(path.read_text())
