"""Outputs on another file system: `models/` as a link to a bigger disk or a mounted volume.
A training run publishes its checkpoint there by writing beside it and renaming it there,
never by renaming across file systems (which fails with EXDEV after every epoch has run)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from harclip.train import stage as train_stage
from tests.support.params import train_config

OTHER_DISK = Path("/dev/shm")
"""A tmpfs: another file system than the tests' temporary folders wherever it exists."""


@pytest.fixture
def other_disk(tmp_path):
    if not OTHER_DISK.is_dir() or OTHER_DISK.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip(f"{OTHER_DISK} is not another file system than {tmp_path} here")
    with tempfile.TemporaryDirectory(dir=OTHER_DISK) as folder:
        yield Path(folder)


def test_a_run_publishes_its_checkpoint_into_models_on_another_file_system(
        small_cache, tmp_path, other_disk):
    (tmp_path / "models").symlink_to(other_disk, target_is_directory=True)
    assert os.stat(tmp_path / "models").st_dev != os.stat(tmp_path).st_dev
    config = train_config("clip", epochs=1, batch_size=32, device="cpu")
    summary = train_stage.run("clip", config, small_cache, tmp_path / "models",
                              tmp_path / "logs", tmp_path / "resume")
    published = torch.load(other_disk / "clip.pt", weights_only=True)
    assert published["temperature"] == pytest.approx(summary["temperature"])
    assert sorted(path.name for path in other_disk.iterdir()) == ["clip.pt"]  # no partial
    assert not (tmp_path / "resume" / "clip").exists()  # the finished run's work is gone
