"""A training run's record in logs/<method>/, written by rank 0 as the epochs end: DVCLive's
per-epoch series and summary (`harclip.data.records` names them and reads them back), the
params, and the console's epoch lines in train.log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from harclip.data.records import OPTIONAL_SERIES, SERIES
from harclip.runtime.log import log


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
        log.addHandler(self.text)

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
        log.info(
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
        log.removeHandler(self.text)
        self.text.close()
        repo = getattr(self.live, "_dvc_repo", None)
        if repo is not None:
            repo.close()
