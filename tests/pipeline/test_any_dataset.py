"""Any labelled image set through the whole pipeline under DVC: a 5-class and a 40-class set,
their classes from the data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from harclip.model.checkpoints import load_checkpoint
from tests.support.dvc_project import DvcProject
from tests.support.images import class_folders, kaggle_folder
from tests.support.params import tiny_params

FRUIT = ["apple", "banana", "cherry", "date", "elderberry"]


def _any_data_params(source_path, classes):
    params = tiny_params()
    params["download"].update(source="folder", path=str(source_path))
    params["preprocess"].update(image_size=32, val_fraction=0.25, test_fraction=0.25)
    for section in ("train_clip", "train_sglip", "train_aclip"):
        params[section].update(epochs=1, batch_size=8, log_every=1, head_init="text")
    return params


@pytest.mark.slow
def test_a_5_and_a_40_class_set_through_the_pipeline(tmp_path):
    """Class-per-folder (5 classes) through the whole `dvc repro`, then the Kaggle layout (40
    classes) through to A-CLIP's evaluation, with tiny models: checkpoints carry the classes,
    predict prints them, `dvc status` is clean after (the confusion figure's growth with the
    classes: test_evaluate_plot)."""
    five = tmp_path / "five"
    class_folders(five, FRUIT, per_class=4, size=(48, 40))
    forty_names = [f"action_{i:02d}" for i in range(40)]
    forty = tmp_path / "forty"
    kaggle_folder(forty, forty_names, per_class=4, size=(48, 40))
    project = DvcProject(tmp_path / "repo", _any_data_params(five, FRUIT))
    for source, classes, targets in ((five, FRUIT, ()),
                                     (forty, forty_names, ("evaluate@aclip",))):
        project.write_params(_any_data_params(source, classes))
        project.repro(*targets)
        assert project.up_to_date(*targets)
        methods = ("clip", "sglip", "aclip") if not targets else ("aclip",)
        for method in methods:
            _, meta = load_checkpoint(project.root / "models" / f"{method}.pt")
            assert meta["class_names"] == classes
        photo = project.root / "photo.png"
        Image.new("RGB", (40, 40), (90, 30, 200)).save(photo)
        printed = subprocess.run(
            [sys.executable, "-m", "harclip.predict", "--model", "models/aclip.pt", str(photo),
             "--top-k", "2"], cwd=project.root, env=project.env, capture_output=True,
            text=True, check=True).stdout
        assert sum(name in printed for name in classes) == 2
        report = json.loads((project.root / "metrics" / "aclip" / "report.json").read_text())
        assert report["classes"] == list(report["per_class_accuracy"]["test"]) == classes
    table = (project.root / "plots" / "confusions.md").read_text()  # the 5-class run's
    assert "most frequent confusions (test split)" in table
