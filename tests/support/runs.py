"""Small training runs for tests: a Trainer on random uint8 images, the A-CLIP stage started
as DVC starts it (and stopped by a signal), and reading back what a run logged or saved."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from harclip.data.layout import CLASS_NAMES
from harclip.data.records import SERIES, read_epochs, series_file
from harclip.model.backbones import image_normalisation
from harclip.model.classifier import build_model
from harclip.model.feed import CachedSplit
from harclip.model.views import DeviceAugment
from harclip.train.engine import Trainer
from harclip.train.stage import build_objective
from tests.support.params import repo_params

CPU = torch.device("cpu")
RESUME_EPOCHS = 4
"""The A-CLIP stage's epochs in the interruption tests."""


def aclip_stage_params(**train_aclip) -> dict:
    """The shipped params with the A-CLIP stage on the CPU for RESUME_EPOCHS short epochs."""
    params = repo_params()
    params["train_aclip"].update({"epochs": RESUME_EPOCHS, "batch_size": 16, "device": "cpu",
                                  **train_aclip})
    return params


def make_trainer(config, n_train=40, n_val=8):
    """A Trainer of `config` on random 64 px images of the 15 classes, on the CPU."""
    rng = np.random.default_rng(0)
    split = lambda n: CachedSplit(rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8),  # noqa: E731
                                  np.arange(n) % 15, CPU)
    model, prompts = build_model(config)
    augment = DeviceAugment(64, *image_normalisation(model.clip))
    return Trainer(model, build_objective(config, model, prompts), split(n_train),
                   split(n_val), augment, config)


def epoch_rows(log_dir: Path) -> list[dict]:
    """A run's epochs, as DVCLive logged them; each series must hold every step once."""
    for name in SERIES:
        with open(series_file(log_dir, name)) as handle:
            steps = [int(row["step"]) for row in csv.DictReader(handle, delimiter="\t")]
        assert steps == list(range(1, len(steps) + 1)), (name, steps)  # no repeat, no gap
    return read_epochs(log_dir)


def saved_epochs(state: Path) -> int:
    """Epochs a resume state holds (0 without one)."""
    if not state.is_file():
        return 0
    return len(torch.load(state, map_location="cpu", weights_only=True)["trainer"]["history"])


class Stage:
    """`python -m harclip.train aclip` in its own folder, as DVC would run it."""

    def __init__(self, root: Path, cache: Path, params: dict) -> None:
        self.root, self.cache = root, cache
        root.mkdir()
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        self.state = root / ".harclip/resume/aclip/state.pt"

    def start(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "harclip.train", "aclip", "--cache",
                                 str(self.cache)], cwd=self.root, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})

    def stop_after(self, epochs: int, sig: signal.Signals) -> str:
        """Start the stage, send `sig` once its state holds `epochs` epochs; its stderr."""
        process = self.start()
        while saved_epochs(self.state) < epochs:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}
        assert process.returncode == expected[sig], stderr
        return stderr

    def finish(self) -> str:
        process = self.start()
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        return stderr


def random_batch(n=8, size=64, seed=0):
    """Seeded random normalised images and labels cycling over the 15 classes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.arange(n) % len(CLASS_NAMES)
    return images, labels
