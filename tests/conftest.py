"""Fixtures every test may take: the real HAR sample (when present) and a small cache; and the
cores shared out among pytest-xdist's workers."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support import HAR_SAMPLE


def pytest_configure(config):
    """Under pytest-xdist, share the cores among the workers (and the stages they start):
    each worker's torch taking every core makes their OpenMP threads spin against each
    other (on 2 cores the unchanged `gpu_check --small` test took 299 s before, 104 s after).
    And a suite started as a background job (`cmd &` in a script) inherits SIGINT ignored,
    which every process it starts would keep, so the Ctrl-C tests would send a signal their
    stages never see: caught here, it is back to the default in every child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
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


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory) -> Path:
    """A preprocessed cache of 240 synthetic HAR images (train, val, test) and 60 shifted ones
    at 64 px."""
    from harclip.download.sources import write_synthetic
    from harclip.preprocess.stage import preprocess
    from tests.support.params import shipped

    params = shipped()
    root = tmp_path_factory.mktemp("small")
    write_synthetic(replace(params.download.synthetic, images_per_class=16,
                            shifted_images_per_class=4), root / "raw")
    preprocess(replace(params.preprocess, workers=1), root / "raw", root / "cache")
    return root / "cache"
