"""The sweeps queue what they should through `dvc exp run --queue`, and the reports read
exp_show's rows: each model's training params spelled out from the shared and own sections,
seeds paired, one run per seed, old commits' rows (every key per model) alike."""

from __future__ import annotations

import json

import pytest
import yaml
from matplotlib.container import BarContainer

from harclip.config.params import load_params
from harclip.experiments import report, show, sweeps
from tests.support import REPO_ROOT
from tests.support.dvc_project import DvcProject
from tests.support.params import tiny_params


def _params_row() -> dict:
    """params.yaml's values as exp_show's columns: `section.key`, nested keys dotted."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}", inner)
        else:
            flat[prefix] = value

    for section, body in yaml.safe_load((REPO_ROOT / "params.yaml").read_text()).items():
        walk(section, body)
    return flat


def _run(metrics: dict, params: dict, typ="branch_commit", prefix="") -> dict:
    """One finished experiment as `finished_runs` gives it; `prefix` is the file path
    exp_show puts before a metric's name where two files share it."""
    return report.per_model_params({
        "rev": "abc", "typ": typ, "State": "Success", **_params_row(), **params,
        **{f"{prefix}{name}": v for name, v in metrics.items()}})


def test_each_models_training_params_are_spelled_out_from_the_shared_and_its_own():
    row = report.per_model_params({"train.lr": 1e-3, "train.seed": 0.0,
                                   "params.yaml:train.augment.flip": True,
                                   "train_clip.lr": 2e-4, "train_sglip.lr": "None",
                                   "train_aclip.aclip.keep_ratio": 0.5, "clip.test_acc": 0.7})
    assert {k: row.get(f"train_{m}.{k}") for m in ("clip",) for k in ("lr", "seed")} == \
        {"lr": 2e-4, "seed": 0.0}
    assert row["train_sglip.lr"] == 1e-3  # exp_show's "None": a key the row lacks
    assert row["train_aclip.augment.flip"] is True and row["train_aclip.aclip.keep_ratio"] == 0.5
    assert not any(key.removeprefix("params.yaml:").startswith("train.") for key in row)
    assert row["clip.test_acc"] == 0.7


def _aclip(saliency, keep, seed, test_acc, typ="branch_commit"):
    return _run({"aclip.test_acc": test_acc, "aclip.val_acc": test_acc, "aclip.epoch_s": 10.0},
                {"train_aclip.aclip.saliency": saliency, "train_aclip.aclip.keep_ratio": keep,
                 "train_aclip.seed": seed}, typ)


def test_ablation_table_groups_by_token_choice_with_one_run_per_seed():
    baseline = _aclip("teacher", 0.75, 0, 0.50, typ="baseline")
    rows = [baseline,
            _aclip("teacher", 0.75, 1, 0.54), _aclip("teacher", 0.75, 0, 0.99),  # seed 0 again
            _aclip("random", 0.5, 0, 0.40), _aclip("random", 0.5, 1, 0.44)]
    other_sweep = _aclip("random", 0.5, 2, 0.10)
    other_sweep["train_aclip.epochs"] = 3  # a run of another sweep: not this ablation's
    table, found = report.ablation_table([*rows, other_sweep])
    teacher, flip = found[("teacher", 0.75)], found[("random", 0.5)]
    assert teacher["test_acc"] == [0.50, 0.54]  # the commit's seed 0, not the repeat
    assert flip["test_acc"] == [0.40, 0.44] and flip["seeds"] == 2
    assert "| random (FLIP) | 0.5 | 2 | 42.0 ± 2.8 |" in table
    assert "| attentive, teacher every step | 0.75 | 2 | 52.0 ± 2.8 |" in table
    assert set(found) == {("teacher", 0.75), ("random", 0.5)}


def test_seeds_table_reads_metric_columns_prefixed_with_their_file():
    rows = [_run({f"{m}.{k}": acc for m in ("clip", "sglip", "aclip")
                  for k in ("test_acc", "val_acc", "epoch_s")}, {"train.seed": seed},
                 "baseline" if seed == 0 else "branch_commit", prefix="metrics/x/eval.json:")
            for seed, acc in ((0, 0.5), (1, 0.6), (2, 0.7))]
    table, found = report.seeds_table(rows)
    assert found["sglip"]["seeds"] == [0, 1, 2]
    assert found["clip"]["test_acc"] == pytest.approx([0.5, 0.6, 0.7])
    assert "| **A-CLIP** | 0, 1, 2 | 60.0 ± 10.0 | 60.0 ± 10.0 | 0.6 ± 0.1 |" in table


def test_the_ablation_skips_the_run_params_yaml_already_is(monkeypatch):
    queued = []
    monkeypatch.setattr(sweeps, "_dvc", lambda *args: queued.append(args))
    sweeps.queue_ablation(REPO_ROOT / "params.yaml", [0, 1], jobs=1)
    runs = [a for a in queued if a[0] == "exp"]
    assert all("++train_aclip.seed=1" in a or "++train_aclip.seed=0" in a for a in runs)
    own = load_params(REPO_ROOT / "params.yaml").train_aclip
    names = [a[a.index("--name") + 1] for a in runs]
    assert len(runs) == 2 * len(sweeps.ABLATION) - 1
    assert f"abl-{own.aclip.saliency}-{own.aclip.keep_ratio}-s{own.seed}" not in names
    assert queued[-1] == ("queue", "start", "-j", "1")


@pytest.mark.slow
def test_stages_run_the_projects_own_code_not_the_installed_copy(tmp_path):
    """A queued `dvc exp run` executes in a copy of the repo; its stages must import that
    copy's src/ (the experiment's code), not whatever the editable install points to."""
    project = DvcProject(tmp_path, tiny_params())
    with (project.root / "src" / "harclip" / "config" / "params.py").open("a") as config:
        config.write('\nraise SystemExit("imported the experiment\'s own src/harclip")\n')
    with pytest.raises(AssertionError, match="imported the experiment's own src/harclip"):
        project.repro("check_params")


def test_show_lists_the_params_that_differ_and_every_models_headline():
    baseline = _run({"clip.test_acc": 0.5, "clip.val_acc": 0.55, "clip.shift_acc": 0.475,
                     "clip.corrupt_acc": 0.4213,
                     "clip.test_ece": 0.03124,
                     "clip.epoch_s": 12.34, "clip.peak_mb": 980.2}, {}, typ="baseline",
                    prefix="metrics/clip/eval.json:")
    baseline["clip.inference"] = "1,234 img/s, 2.5 ms (cpu)"  # `with_inference`
    faster = _run({"clip.test_acc": 0.61, "clip.epoch_s": 9.0}, {"train_clip.lr": 5e-4})
    faster["Experiment"] = "lr-5e-4"
    table = show.show_table([baseline, faster]).splitlines()
    assert table[0].startswith("| run | train_clip.lr | CLIP test % | CLIP val % | "
                               "CLIP shifted % | CLIP corrupted % | CLIP test ECE | "
                               "CLIP s/epoch | CLIP MB | CLIP inference | SigLIP test %")
    lr = _params_row()["train.lr"]
    assert table[2].startswith(f"| abc (commit) | {lr} | 50.0 | 55.0 | 47.5 | 42.1 | 0.031 | "
                               f"12.3 | 980 | 1,234 img/s, 2.5 ms (cpu) | — |")
    assert table[3].startswith("| lr-5e-4 | 0.0005 | 61.0 | — | — | — | — | 9.0 | — | — |")
    assert all(len(line.split("|")) == len(table[0].split("|")) for line in table)


def test_show_reads_each_models_inference_cost_from_its_report_at_the_rows_commit():
    reports = {("metrics/clip/report.json", "abc"): {"inference": {
        "img_s": 1234.5, "latency_ms_p50": 2.54, "device": "2 CPU cores (x)"}},
        ("metrics/sglip/report.json", "abc"): {"scores": {}},  # timed before inference was
        ("metrics/clip/report.json", "def"): {"inference": {"img_s": 9.0}}}  # incomplete

    def read(path, rev):
        if (path, rev) not in reports:
            raise FileNotFoundError(path)
        return json.dumps(reports[(path, rev)])

    rows = show.with_inference([{"rev": "abc"}, {"rev": "def"}], read)
    assert rows == [{"rev": "abc", "clip.inference": "1,234 img/s, 2.5 ms (2 CPU cores (x))"},
                    {"rev": "def"}]


def test_the_finetune_sweep_queues_every_arm_but_the_commits_for_the_three_models(monkeypatch):
    queued = []
    monkeypatch.setattr(sweeps, "_dvc", lambda *args: queued.append(args))
    sweeps.queue_finetune(REPO_ROOT / "params.yaml", [0, 1], jobs=0)
    runs = [a for a in queued if a[0] == "exp"]
    assert len(runs) == 2 * (len(sweeps.FINETUNE) - 1) and queued[-1][0] == "exp"
    lora = next(a for a in runs if "ft-LoRA-rank-4-s1" in a)
    assert [a for a in lora if "=" in a] == ["train.tune=\"lora\"", "train.seed=1"]  # shared
    scratch = next(a for a in runs if "ft-from-scratch-lr-s0" in a)
    assert [a for a in scratch if "pretrained" in a] == [  # each model's own start
        f"++train_{m}.pretrained=null" for m in ("clip", "sglip", "aclip")]
    assert "train.lr=0.001" in scratch


def test_a_key_one_models_section_holds_is_set_in_every_models_section(tmp_path):
    """A shared value would not reach the model that overrides it; `++` adds the key to the
    sections that lack it, as DVC's `-S` requires."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train_aclip"]["seed"] = 7  # as `dvc exp apply` of an ablation run leaves it
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert sweeps.set_training(path, "seed", 1) == [
        arg for m in ("clip", "sglip", "aclip") for arg in ("-S", f"++train_{m}.seed=1")]
    assert sweeps.set_training(REPO_ROOT / "params.yaml", "seed", 1) == ["-S", "train.seed=1"]


def test_the_finetune_table_lists_each_arm_per_model_with_wise_ft_from_full_runs(tmp_path):
    """Rows of commits from before the shared section: every key set per model."""
    metrics = lambda acc, wise=None: {  # noqa: E731
        f"{m}.{k}": v for m in ("clip", "sglip", "aclip")
        for k, v in (("test_acc", acc), ("epoch_s", 10.0), ("peak_mb", 900.0),
                     ("trainable", 4000), ("wise_test_acc", wise)) if v is not None}
    seed = lambda s: {f"train_{m}.seed": s for m in ("clip", "sglip", "aclip")}  # noqa: E731
    lora = lambda s: {**seed(s), **{f"train_{m}.tune": "lora"  # noqa: E731
                                    for m in ("clip", "sglip", "aclip")}}
    checkpointed = lambda s: {**seed(s), **{  # noqa: E731
        f"train_{m}.grad_checkpointing": "True" for m in ("clip", "sglip", "aclip")}}  # exp_show
    smoothed = {**seed(1), **{f"train_{m}.label_smoothing": 0.1
                              for m in ("clip", "sglip", "aclip")}}
    scratch = {**seed(0), **{f"train_{m}.{k}": v for m in ("clip", "sglip", "aclip")
                             for k, v in (("pretrained", "None"), ("head_init", "random"),
                                          ("lr", 0.001))}}  # exp_show writes null as "None"
    rows = [_run(metrics(0.70, 0.72), seed(0), typ="baseline"),
            _run(metrics(0.74, 0.76), seed(1)),
            _run(metrics(0.60), lora(0)), _run(metrics(0.64), lora(1)),
            _run(metrics(0.40), scratch), _run(metrics(0.70), checkpointed(0)),
            _run(metrics(0.90), checkpointed(7)),  # a seed full fine-tuning lacks
            _run(metrics(0.78), smoothed)]
    found = report.finetune_found(rows)
    clip = found["clip"]
    assert clip["from scratch, lr 1e-3"]["test_acc"] == pytest.approx([0.40])
    assert clip["gradient checkpointing"]["test_acc"] == pytest.approx([0.70, 0.90])
    assert clip["full fine-tuning"]["test_acc"] == pytest.approx([0.70, 0.74])
    assert clip["LoRA, rank 4"]["test_acc"] == pytest.approx([0.60, 0.64])
    assert clip["WiSE-FT at the α chosen on val"]["test_acc"] == pytest.approx([0.72, 0.76])
    assert "+ layer decay 0.75" not in clip  # not run
    table = report.finetune_table(found)
    assert "| full fine-tuning | 2 | 72.0 ± 2.8 | — | 10.0 ± 0.0 | 900 ± 0 | 4,000 |" in table
    # each arm against full fine-tuning at the same seed, not at the same position
    assert "| LoRA, rank 4 | 2 | 62.0 ± 2.8 | -10.0 ± 0.0 | 10.0 ± 0.0 | 900 ± 0 | 4,000 |" \
        in table
    assert "| + label smoothing 0.1 | 1 | 78.0 ± — | +4.0 ± — |" in table
    assert "| WiSE-FT at the α chosen on val | 2 | 74.0 ± 2.8 | +2.0 ± 0.0 |" in table
    assert "| gradient checkpointing | 2 | 80.0 ± 14.1 | +0.0 ± — (1 seed) |" in table
    figure = report.finetune_figure(found, tmp_path / "finetune.png")
    assert (tmp_path / "finetune.png").read_bytes().startswith(b"\x89PNG")
    top_left = figure.axes[0]  # CLIP against full fine-tuning: from scratch left to the table
    assert [label.get_text() for label in top_left.get_yticklabels()] == [
        "+ label smoothing 0.1", "LoRA, rank 4", "gradient checkpointing",
        "WiSE-FT at the α chosen on val"]
    bars = next(c for c in top_left.containers if isinstance(c, BarContainer))
    assert [bar.get_width() for bar in bars] == pytest.approx(
        [4.0, -10.0, 0.0, 2.0])
