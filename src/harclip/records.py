"""What a training run leaves in logs/<method>/: writing it, and reading it back (no torch).

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
import logging
from pathlib import Path

from harclip import stage

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
OPTIONAL_SERIES = {"val/ema_loss": "ema_val_loss", "val/ema_acc": "ema_val_acc"}
"""Series only some runs log (the weights' EMA, with `ema_decay`)."""
"""DVCLive's name of each per-epoch series → the EpochRecord field it logs. Both losses named
`loss` are the class head's cross-entropy; the image–text term has its own series."""

HEADLINE = ("best_epoch", "epoch_s", "img_s", "peak_mb", "trainable")
"""The summary keys, under the model's name so the three models' columns in `dvc exp show`
are told apart without their file paths."""


class RunLog:
    """The run's record, written by rank 0: DVCLive's per-epoch series (step = epoch), params
    and summary, the text log and the console's one line per epoch."""

    def __init__(self, name: str, log_dir: Path, params: dict) -> None:
        from dvclive import Live

        self.name, self.log_dir = name, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        # dvc.yaml declares the outputs, metrics and plots: DVCLive must not write its own.
        self.live = Live(str(log_dir), dvcyaml=False, save_dvc_exp=False)
        self.live.log_params(json.loads(json.dumps(params)))  # tuples as lists
        self.text = logging.FileHandler(log_dir / "train.log", mode="w")
        self.text.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        stage.log.addHandler(self.text)

    def epoch(self, record, summary: dict) -> None:
        """Log one epoch (an engine.EpochRecord; a resumed run replays the epochs it
        restored, so each is logged once and DVCLive's steps have no gap) and set the run's
        summary so far (HEADLINE's keys)."""
        self.live.step = record.epoch
        for name, field in (SERIES | OPTIONAL_SERIES).items():
            if getattr(record, field) is not None:
                self.live.log_metric(name, round(getattr(record, field), 6))
        self.live.summary = {self.name: summary}
        self.live.make_summary()
        refresh = f" (refresh {record.refresh_time_s:.1f} s)" if record.refresh_time_s else ""
        image_text = f", image-text {record.train_image_text_loss:.4f}" \
            if record.train_image_text_loss else ""
        stage.log.info(
            "%s epoch %d: train CE %.4f%s acc %.3f | val CE %.4f acc %.3f | %.1f s%s, "
            "%.0f img/s, peak %.0f MB, lr %.2e", self.name, record.epoch, record.train_loss,
            image_text, record.train_acc, record.val_loss, record.val_acc,
            record.epoch_time_s, refresh, record.images_per_s, record.peak_memory_mb, record.lr)

    def finish(self, run: dict) -> None:
        (self.log_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        self.live.end()

    def close(self) -> None:
        """Release the log file and the git repository DVCLive opened (DVCLive has no close:
        left to the garbage collector at exit, dulwich's pack files print 'sys.meta_path is
        None' tracebacks)."""
        stage.log.removeHandler(self.text)
        self.text.close()
        repo = getattr(self.live, "_dvc_repo", None)
        if repo is not None:
            repo.close()


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
