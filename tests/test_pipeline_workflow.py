"""The DVC workflow users run after set-up: repro, status, metrics diff, plots, experiments."""

import json

import pytest
from PIL import Image

from tests.dvc_project import DvcProject
from tests.test_pipeline_train import tiny_training_params

pytestmark = pytest.mark.slow


def test_repro_status_metrics_diff_plots_and_experiments(tmp_path):
    project = DvcProject(tmp_path, tiny_training_params())
    ran = project.repro()
    assert ran[:2] == ["download", "preprocess"] and ran[-1] == "plot"
    assert sorted(ran[2:-1]) == sorted(["train_clip", "train_sglip", "train_aclip",
                                        "evaluate@clip", "evaluate@sglip", "evaluate@aclip"])
    assert project.dvc("status").strip().startswith("Data and pipelines are up to date")
    for path in (tmp_path / "plots").glob("*.png"):
        with Image.open(path) as image:
            image.verify()
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert all(f"**{label}**" in summary for label in ("CLIP", "SigLIP", "A-CLIP"))
    shown = json.loads(project.dvc("metrics", "show", "--json"))
    assert json.dumps(shown).count("best_val_acc") == 3  # every model's train.json
    assert json.dumps(shown).count("macro_f1") == 3  # and eval.json
    project.commit("first results")

    # One model's key: that model's training stage, its evaluation and the plots rerun.
    project.set_param("train_clip.lr", 3e-3)
    assert project.changed_stages() == {"train_clip"}  # dvc status lists only that stage
    assert project.repro() == ["train_clip", "evaluate@clip", "plot"]
    diff = json.loads(project.dvc("metrics", "diff", "--json"))
    changed = {path for path, values in diff.items() if values}
    assert changed and all("/clip/" in path for path in changed)
    assert "metrics/clip/eval.json" in changed

    html_dir = tmp_path / "plots-html"
    project.dvc("plots", "show", "--out", str(html_dir))
    html = (html_dir / "index.html").read_text()
    assert "Validation accuracy" in html and "CLIP confusion matrix" in html
    assert "compare_val_accuracy.png" in html
    project.commit("clip lr 3e-3")

    project.dvc("exp", "run", "-S", "train_sglip.lr=0.002", "--name", "sglip-lr")
    table = project.dvc("exp", "show", "--md")
    assert "sglip-lr" in table and "0.002" in table
