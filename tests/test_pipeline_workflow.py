"""The DVC workflow users run after set-up: repro, status, metrics diff, plots, experiments."""

import csv
import json
import subprocess

import pytest
from PIL import Image

from harclip.har import CLASS_NAMES
from harclip.models import load_checkpoint
from tests.dvc_project import BIN, DvcProject
from tests.test_pipeline_train import STUDY_COLUMNS, tiny_training_params

pytestmark = pytest.mark.slow


def _check_training_outputs(root) -> None:
    """What train_clip wrote: the checkpoint, the per-epoch table and log, its metrics."""
    model, meta = load_checkpoint(root / "models" / "clip.pt")
    assert meta["model"] == "harclip-tiny-clip" and meta["class_names"] == list(CLASS_NAMES)
    assert meta["params"]["epochs"] == 2 and meta["epoch"] in (1, 2)
    with open(root / "logs" / "clip" / "epochs.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == STUDY_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    assert "clip epoch 2: train CE" in (root / "logs" / "clip" / "train.log").read_text()
    metrics = json.loads((root / "metrics" / "clip" / "train.json").read_text())
    assert metrics["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows),
                                                   abs=1e-6)  # the TSV keeps 6 decimals
    assert metrics["best_epoch"] == meta["epoch"]
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())


def test_repro_status_metrics_diff_plots_and_experiments(tmp_path):
    project = DvcProject(tmp_path, tiny_training_params())
    ran = project.repro()
    assert ran[:2] == ["download", "preprocess"] and ran[-1] == "plot"
    assert sorted(ran[2:-1]) == sorted(["train_clip", "train_sglip", "train_aclip",
                                        "evaluate@clip", "evaluate@sglip", "evaluate@aclip"])
    assert project.dvc("status").strip().startswith("Data and pipelines are up to date")
    _check_training_outputs(tmp_path)
    for path in (tmp_path / "plots").glob("*.png"):
        with Image.open(path) as image:
            image.verify()
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert all(f"**{label}**" in summary for label in ("CLIP", "SigLIP", "A-CLIP"))
    shown = json.loads(project.dvc("metrics", "show", "--json"))
    assert json.dumps(shown).count("best_val_acc") == 3  # every model's train.json
    assert json.dumps(shown).count("macro_f1") == 6  # and eval.json, val and test
    project.commit("first results")

    # One model's key: that model's training stage, its evaluation and the plots rerun.
    project.set_param("train_clip.lr", 3e-3)
    assert project.changed_stages() == {"train_clip"}  # dvc status lists only that stage
    assert project.repro() == ["train_clip", "evaluate@clip", "plot"]
    diff = json.loads(project.dvc("metrics", "diff", "--json"))
    changed = {path for path, values in diff.items() if values}
    assert changed and all("/clip/" in path for path in changed)
    assert "metrics/clip/eval.json" in changed
    project.set_param("train_aclip.aclip.saliency", "random")  # FLIP, through dvc repro
    assert project.changed_stages() == {"train_aclip"}
    assert project.repro() == ["train_aclip", "evaluate@aclip", "plot"]

    html_dir = tmp_path / "plots-html"
    project.dvc("plots", "show", "--out", str(html_dir))
    html = (html_dir / "index.html").read_text()
    assert "Validation accuracy" in html and "CLIP confusion matrix" in html
    assert "compare_val_accuracy.png" in html
    project.commit("clip lr 3e-3")

    project.dvc("exp", "run", "-S", "train_sglip.lr=0.002", "--name", "sglip-lr")
    table = project.dvc("exp", "show", "--md")
    assert "sglip-lr" in table and "0.002" in table

    # A mistyped section on an unchanged pipeline: only check_params reads it, and fails.
    params = project.params
    params["trian_clip"] = {"epochs": 1}
    project.write_params(params)
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=tmp_path, env=project.env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "unknown key 'trian_clip'" in result.stdout + result.stderr
