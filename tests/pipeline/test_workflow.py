"""The DVC workflow users run after set-up: repro, status, metrics diff, plots, experiments,
DVCLive's logs and the model registry."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from PIL import Image

from harclip.data.layout import CLASS_NAMES
from harclip.data.records import HEADLINE, SERIES, read_run
from harclip.model.checkpoints import load_checkpoint
from tests.support.dvc_project import BIN, DvcProject
from tests.support.params import tiny_training_params
from tests.support.runs import epoch_rows

pytestmark = pytest.mark.slow


def _check_training_outputs(root) -> None:
    """What train_clip wrote: the checkpoint, DVCLive's series and summary, the log."""
    model, meta = load_checkpoint(root / "models" / "clip.pt")
    assert meta["model"] == "harclip-tiny-clip" and meta["class_names"] == list(CLASS_NAMES)
    assert meta["params"]["epochs"] == 2 and meta["epoch"] in (1, 2)
    rows = epoch_rows(root / "logs" / "clip")
    assert set(rows[0]) == {"epoch", *SERIES.values()} and [r["epoch"] for r in rows] == [1, 2]
    assert "clip epoch 2: train CE" in (root / "logs" / "clip" / "train.log").read_text()
    summary = json.loads((root / "logs" / "clip" / "metrics.json").read_text())
    assert summary["step"] == 2 and set(summary["clip"]) == set(HEADLINE)
    best = max(rows, key=lambda r: r["val_acc"])
    assert summary["clip"]["best_epoch"] == meta["epoch"] == best["epoch"]
    run = read_run(root / "logs" / "clip")
    assert run["parameters"] == sum(p.numel() for p in model.parameters())
    assert run["mean_save_time_s"] > 0  # the per-epoch saves, outside the epoch time
    params = yaml.safe_load((root / "logs" / "clip" / "params.yaml").read_text())
    assert params["epochs"] == 2 and params["model"] == "harclip-tiny-clip"  # DVCLive's copy


HEADLINE_COLUMNS = {f"{method}.{key}" for method in ("clip", "sglip", "aclip")
                    for key in (*HEADLINE, "val_acc", "test_acc", "test_f1", "test_top5",
                                "test_ece", "corrupt_acc", "shift_acc")}


def _flat(shown: dict) -> set[str]:
    """The metric names `dvc metrics show --json` lists for the workspace."""
    names = set()
    (workspace,) = shown.values()  # one revision: the workspace
    for data in workspace["data"].values():
        for key, value in data["data"].items():
            names |= {f"{key}.{inner}" for inner in value} if isinstance(value, dict) \
                else {key}
    return names


def _exp_show(root) -> list[dict]:
    """`dvc.api.exp_show` of the project at `root` (run in a child: DVC is cwd-bound)."""
    code = "import dvc.api, json; print(json.dumps(dvc.api.exp_show()))"
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def test_repro_status_metrics_diff_plots_and_experiments(tmp_path):
    params = tiny_training_params()
    params["train_aclip"]["aclip"]["saliency"] = "random"  # FLIP, through dvc repro
    params["train_sglip"].update(pretrained=None, head_init="random", lr=1e-3)  # from scratch
    project = DvcProject(tmp_path, params)
    ran = project.repro()
    assert ran[:2] == ["download", "preprocess"] and ran[-1] == "plot"
    assert sorted(ran[2:-1]) == sorted(["train_clip", "train_sglip", "train_aclip",
                                        "evaluate@clip", "evaluate@sglip", "evaluate@aclip"])
    # the one stage that runs on every repro (it checks params.yaml and the starts first)
    assert project.dvc("status").split() == ["check_params:", "always", "changed"]
    _check_training_outputs(tmp_path)
    _, meta = load_checkpoint(tmp_path / "models" / "aclip.pt")
    assert meta["params"]["aclip"]["saliency"] == "random"  # the key reached the stage
    scratch = json.loads((tmp_path / "metrics" / "sglip" / "report.json").read_text())
    assert "wise_ft" not in scratch and "wise_ft" in json.loads(
        (tmp_path / "metrics" / "clip" / "report.json").read_text())  # WiSE-FT needs a start
    for path in (tmp_path / "plots").glob("*.png"):
        with Image.open(path) as image:
            image.verify()
    summary = (tmp_path / "plots" / "summary.md").read_text()
    assert all(f"**{label}**" in summary for label in ("CLIP", "SigLIP", "A-CLIP"))
    shown = json.loads(project.dvc("metrics", "show", "--json"))
    wise = {f"{method}.{key}" for method in ("clip", "aclip")  # sglip: from scratch
            for key in ("wise_alpha", "wise_test_acc", "wise_shift_acc")}
    assert _flat(shown) == HEADLINE_COLUMNS | wise | {"step"}  # a few numbers, none per class
    project.commit("first results")

    # One model's key: that model's training stage, its evaluation and the plots rerun.
    project.set_param("train_clip.lr", 3e-3)
    assert project.changed_stages() == {"train_clip"}  # dvc status lists only that stage
    assert project.repro() == ["train_clip", "evaluate@clip", "plot"]
    diff = json.loads(project.dvc("metrics", "diff", "--json"))
    changed = {path for path, values in diff.items() if values}
    assert changed and all("/clip/" in path for path in changed)
    assert {"metrics/clip/eval.json", "logs/clip/metrics.json"} <= changed
    diff_all = json.loads(project.dvc("metrics", "diff", "--all", "--json"))  # unchanged too
    assert {"clip.val_acc", "clip.test_acc"} <= set(diff_all["metrics/clip/eval.json"])
    assert all(key.startswith("clip.") for values in diff.values() for key in values)

    # A shared training key: the three trainings rerun (`dvc repro --dry` lists what `dvc repro`
    # starts with, without training three models; their evaluations and the plots follow new
    # checkpoints, as for one model above), and nothing upstream.
    shared = project.params["train"]["warmup_epochs"]
    project.set_param("train.warmup_epochs", shared / 2)
    trainings = {"train_clip", "train_sglip", "train_aclip"}
    assert project.changed_stages() == trainings
    would = re.findall(r"Running stage '([^']+)'", project.dvc("repro", "--dry"))
    assert set(would) - {"check_params"} == trainings
    project.set_param("train.warmup_epochs", shared)
    assert project.changed_stages() == set()

    # Evaluate's keys (the common corruptions; WiSE-FT's α): the evaluations and plots, no
    # training.
    project.set_param("evaluate.corruptions.severities", [2, 5])
    evaluations = {"evaluate@clip", "evaluate@sglip", "evaluate@aclip"}
    assert project.changed_stages() == evaluations
    project.set_param("evaluate.wise_alphas", [0.0, 1.0])
    assert project.changed_stages() == evaluations
    assert set(project.repro()) == evaluations | {"plot"}
    report = json.loads((tmp_path / "metrics" / "clip" / "report.json").read_text())
    assert {name: list(by_severity) for name, by_severity in report["corruptions"].items()} \
        == {name: ["2", "5"] for name in project.params["evaluate"]["corruptions"]["names"]}

    html_dir = tmp_path / "plots-html"
    project.dvc("plots", "show", "--out", str(html_dir))
    html = (html_dir / "index.html").read_text()
    assert "Validation accuracy" in html and "CLIP confusion matrix (test split)" in html
    for method in ("clip", "sglip", "aclip"):  # each model's curve, from DVCLive's series
        assert f'"{method}/plots/metrics/val/acc.tsv"' in html  # (DVC shortens the paths)
    assert "compare_val_accuracy.png" in html
    project.commit("clip lr 3e-3")

    # One model's keys in an experiment: `++` overrides a key its section holds and adds one it
    # takes from the shared section (DVC's -S needs it for a key the section lacks).
    project.dvc("exp", "run", "-S", "++train_sglip.lr=0.002",
                "-S", "++train_sglip.label_smoothing=0.1", "--name", "sglip-lr")
    rows = {row["Experiment"] or row["rev"]: row for row in _exp_show(tmp_path)}
    assert rows["sglip-lr"]["train_sglip.lr"] == 0.002
    assert rows["sglip-lr"]["train_sglip.label_smoothing"] == 0.1
    metrics = {key.split(":")[-1] for key in rows["sglip-lr"]
               if key.startswith(("clip.", "sglip.", "aclip.")) or ".json:" in key}
    assert metrics == HEADLINE_COLUMNS | wise | {"step"}  # none per class, no hardware strings
    assert all(isinstance(rows["sglip-lr"][key], float | int) for key in rows["sglip-lr"]
               if key.split(":")[-1] in metrics)
    shown = subprocess.run([sys.executable, "-m", "harclip.experiments", "show"], cwd=tmp_path,
                           env=project.env, capture_output=True, text=True, check=True).stdout
    experiment = next(line for line in shown.splitlines() if line.startswith("| sglip-lr |"))
    assert experiment.count(" ms (") == 3  # each model's inference cost, from its report.json
    table = subprocess.run([str(BIN / "dvc"), "exp", "show", "--only-changed", "--no-pager"],
                           cwd=tmp_path, env={**project.env, "COLUMNS": "160"},
                           capture_output=True, text=True, check=True).stdout
    assert max(map(len, table.splitlines())) <= 160, table
    shown = [c for c in table.splitlines()[1].split() if c != "…"]
    every = [c.strip() for c in project.dvc("exp", "show", "--only-changed", "--md")
             .splitlines()[0].split("|") if c.strip()]
    assert shown == every[:len(shown)], table  # the narrow table cuts columns at the end only
    changed = [c for c in every if c.startswith("sglip.")]
    scores = [c for c in changed if c.split(".")[1] in ("val_acc", "test_acc", "test_f1",
                                                        "test_top5")]
    assert changed[:len(scores)] == scores  # accuracy first, then speed and memory
    speed = [c for c in changed if c == "sglip.epoch_s"]  # unchanged where rounding ties
    assert all(every.index(s) > every.index(scores[-1]) for s in speed)
    # within 160 columns: the accuracies, the shifted one among them (since the shift split,
    # time per epoch falls just past 160 columns and `dvc exp show` elides it)
    assert set(scores + [c for c in changed if c == "sglip.shift_acc"]) <= set(shown), table
    html_dir = tmp_path / "plots-diff"
    project.dvc("plots", "diff", "HEAD", "sglip-lr", "--out", str(html_dir))
    assert "sglip-lr" in (html_dir / "index.html").read_text()
    project.run(str(BIN / "gto"), "register", "sglip")  # a version tag: sglip@v0.0.1
    project.dvc("artifacts", "get", ".", "sglip", "-o", str(tmp_path / "registry.pt"))
    _, meta = load_checkpoint(tmp_path / "registry.pt")
    assert meta["model"] == "harclip-tiny-siglip" and meta["params"]["lr"] == 1e-3  # committed
    assert meta["params"]["pretrained"] is None and meta["params"]["head_init"] == "random"

    # A mistyped section on an unchanged pipeline: only check_params reads it, and fails.
    params = project.params
    params["trian_clip"] = {"epochs": 1}
    project.write_params(params)
    result = subprocess.run([str(BIN / "dvc"), "repro"], cwd=tmp_path, env=project.env,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "unknown key 'trian_clip'" in result.stdout + result.stderr
