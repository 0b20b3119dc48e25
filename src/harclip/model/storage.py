"""torch files as data only: written atomically, read without unpickling, so a file that
carries code never runs it, and a bad file is one line that names it."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from harclip.runtime.errors import StageError, first_line

CHECKPOINT_FORMAT = "harclip-classifier"
"""The `format` of a fine-tuned classifier's file (`models/<method>.pt`)."""


def save_atomically(payload: dict, path: Path) -> None:
    """torch.save into a partial file beside `path`, renamed over it: a stop or a full disk
    leaves the earlier file, never a truncated one, and the rename never crosses file systems
    (`models/` may be a link to another disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(payload, partial)
        partial.replace(path)
    except (OSError, RuntimeError) as err:  # torch reports failed writes as RuntimeError
        partial.unlink(missing_ok=True)
        raise StageError(f"{path}: could not be written ({err}); check the free space and "
                         f"rerun") from err


def load_data(path: Path, kind: str):
    """torch.load of data only (tensors, numbers, strings, containers), onto the CPU; any
    other file is a StageError in one line that calls it not a readable `kind`. A file that
    holds Python objects is refused: pickle would run whatever code they carry. torch's
    warning about a pickle protocol it does not expect is silenced: the refusal says more."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors for anything not a torch file
        if "Weights only load failed" in str(err):  # a pickle, not data alone
            what = f"not a {kind}: it holds Python objects (code)" \
                if "Unsupported global" in str(err) else \
                f"not a readable {kind}: torch's data-only loader refuses it"
            raise StageError(f"{path}: {what}; harclip never unpickles: do not load it with "
                             f"pickle (torch.load(weights_only=False)) unless you trust whoever "
                             f"made it") from None
        first = first_line(err)[:200]
        raise StageError(f"{path}: not a readable {kind} ({type(err).__name__}"
                         f"{': ' + first if first else ''})") from None
