"""Resuming an interrupted training run: its state after the last saved epoch, kept in
.harclip/resume/<name>/ (outside the stage's outputs, which DVC deletes before it reruns a
stage), and the fingerprint a run must share with the interrupted one to resume it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from harclip.config.schema import TrainConfig
from harclip.model.storage import load_data, save_atomically
from harclip.runtime.errors import StageError
from harclip.runtime.log import log
from harclip.train.engine import Trainer

RESUME_DIR = Path(".harclip/resume")
RESUME_FORMAT = "harclip-resume"
RESUME_INDEPENDENT = ("nprocs", "log_every", "resume_every", "cache_in_memory")
"""Params a run can resume across: the trajectory does not depend on them."""


def run_fingerprint(config: TrainConfig, cache_dir: Path, device: torch.device) -> str:
    """What a resumed run must share with the interrupted one: its params (but those in
    RESUME_INDEPENDENT), its data (the cache's manifest of file hashes, or its labels) and the
    kind of device (`device: auto` on a GPU and on a CPU are different runs: their random
    streams are of different generators)."""
    digest = hashlib.sha256()
    params = {k: v for k, v in asdict(config).items() if k not in RESUME_INDEPENDENT}
    params["device_type"] = device.type
    digest.update(json.dumps(params, sort_keys=True).encode())
    manifest = cache_dir / "manifest.csv"
    for path in [manifest] if manifest.is_file() else sorted(cache_dir.glob("*_labels.npy")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_resume_state(path: Path, fingerprint: str) -> dict | None:
    """The trainer state saved by an interrupted run with this fingerprint, else None.

    Loaded on the CPU whatever the run's device: `Trainer.load_state_dict` moves weights and
    optimiser state to their parameters, and random-generator states must stay CPU tensors.
    """
    if not path.is_file():
        return None
    try:
        saved = load_data(path, "resume state")
    except StageError as err:  # a truncated or foreign file: say so and start afresh
        log.warning("%s; starting afresh", err)
        return None
    if not isinstance(saved, dict) or saved.get("format") != RESUME_FORMAT:
        log.warning("%s: not a harclip resume state; starting afresh", path)
        return None
    if saved["fingerprint"] != fingerprint:
        log.info("%s: saved by a run with other params or data; starting afresh", path)
        return None
    return saved["trainer"]


def snapshot(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source`: a hard link where the file system has them (free;
    `source` is only ever replaced by a rename, never rewritten in place), else a copy."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copy2(source, partial)
    partial.replace(target)


def save_resume_state(path: Path, fingerprint: str, trainer: Trainer) -> None:
    save_atomically({"format": RESUME_FORMAT, "fingerprint": fingerprint,
                     "trainer": trainer.state_dict()}, path)
