"""The download and preprocess stages run through real DVC in a temporary git repo.

Only `preprocess` and what it needs run here (the training stages are other tests' subject),
so `dvc status` and `dvc repro` are asked about that target.
"""

from __future__ import annotations

import numpy as np
import pytest

from harclip.data.cache import load_split
from tests.support.dvc_project import DvcProject
from tests.support.params import tiny_params

pytestmark = pytest.mark.slow


def test_preprocess_runs_under_dvc_and_a_key_edit_reruns_only_what_reads_it(tmp_path):
    project = DvcProject(tmp_path, tiny_params())
    assert project.repro("preprocess") == ["download", "preprocess"]
    images, labels = load_split(tmp_path / "data" / "cache", "train")
    # 6 per class: 1 of them to val, 1 to test (round(0.6) = 1)
    assert images.shape[1:] == (3, 24, 24) and len(labels) == 60
    assert project.changed_stages("preprocess") == set()
    project.commit("first run")

    project.set_param("preprocess.val_fraction", 0.5)
    assert project.changed_stages("preprocess") == {"preprocess"}
    assert project.repro("preprocess") == ["preprocess"]
    assert len(load_split(tmp_path / "data" / "cache", "val")[1]) == 45
    assert project.changed_stages("preprocess") == set()

    before = np.array(load_split(tmp_path / "data" / "cache", "val")[0])
    project.set_param("download.synthetic.seed", 1)
    assert project.changed_stages("preprocess") == {"download"}
    assert project.repro("preprocess") == ["download", "preprocess"]
    assert not np.array_equal(before, load_split(tmp_path / "data" / "cache", "val")[0])
