"""harclip's logger and progress bars: our own lines at INFO, other libraries' only when they
warn, open_clip's only when it errs."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger("harclip")


def progress(iterable=None, enabled: bool = True, **kwargs) -> tqdm:
    """A progress bar on a terminal; nothing when output goes to a file or a pipe (CI, logs)
    or when not `enabled` (processes other than rank 0)."""
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)


def quiet_open_clip(record: logging.LogRecord) -> bool:
    """A root-logger filter: open_clip logs through the root logger (a warning for every model
    built without pretrained weights, which is every rebuild from a checkpoint); keep only its
    errors, so stage logs show harclip's own lines."""
    return record.levelno >= logging.ERROR or "open_clip" not in Path(record.pathname).parts


def configure_logging() -> None:
    """Our own progress at INFO; other libraries only warn; open_clip only errs."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    root = logging.getLogger()
    if quiet_open_clip not in root.filters:
        root.addFilter(quiet_open_clip)
