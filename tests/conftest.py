"""Shared fixtures: the real HAR sample (when present) and small image writers."""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
HAR_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "har-sample"


def repo_params() -> dict:
    """params.yaml as a dict, its pretrained starts made absolute: a stage started in a
    temporary folder finds the shipped checkpoints."""
    import yaml

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section in params.values():
        if isinstance(section, dict) and section.get("pretrained"):
            section["pretrained"] = str(REPO_ROOT / section["pretrained"])
    return params


def pytest_configure(config):
    """Under pytest-xdist, share the cores among the workers (and the stages they start):
    each worker's torch taking every core makes their OpenMP threads spin against each
    other (on 2 cores the unchanged `gpu_check --small` test took 299 s before, 104 s after)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            os.cpu_count() or 1
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


@pytest.fixture
def har_sample() -> Path:
    """The real 3,600-image HAR sample beside the checkout; skipped where it is absent."""
    if not (HAR_SAMPLE / "Training_set.csv").is_file():
        pytest.skip("the real HAR sample (../shared/data/har-sample) is not here")
    return HAR_SAMPLE


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A small real JPEG with seeded random content."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory) -> Path:
    """A preprocessed cache of 240 synthetic HAR images (192 train, 48 val) at 64 px."""
    from harclip.config import load_params
    from harclip.download import write_synthetic
    from harclip.preprocess import preprocess

    params = load_params(REPO_ROOT / "params.yaml")
    root = tmp_path_factory.mktemp("small")
    write_synthetic(replace(params.download.synthetic, images_per_class=16), root / "raw")
    preprocess(replace(params.preprocess, workers=1), root / "raw", root / "cache")
    return root / "cache"
