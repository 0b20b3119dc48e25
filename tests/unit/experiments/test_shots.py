"""The few-shot sweep and its report: every (k, arm, seed) queued for the three models; the
table, findings and figure from exp_show's rows, zero-shot at 0 shots and full data apart."""

from __future__ import annotations

import json

import pytest

from harclip.experiments import shots, sweeps
from harclip.runtime.errors import StageError
from tests.support import REPO_ROOT
from tests.unit.experiments.test_experiments import _run

METHODS = ("clip", "sglip", "aclip")


def test_the_shots_sweep_queues_each_k_arm_and_seed_in_the_shared_section(monkeypatch):
    queued = []
    monkeypatch.setattr(sweeps, "_dvc", lambda *args: queued.append(args))
    sweeps.queue_shots(REPO_ROOT / "params.yaml", [1, 4], [0, 2], jobs=2)
    runs = [a for a in queued if a[0] == "exp"]
    assert len(runs) == 2 * 3 * 2 and queued[-1] == ("queue", "start", "-j", "2")
    lora = next(a for a in runs if "shots-4-lora-s2" in a)
    assert [a for a in lora if "=" in a] == ["train.shots_per_class=4", 'train.tune="lora"',
                                             "train.seed=2", "evaluate.wise_alphas=[]",
                                             "evaluate.corruptions.names=[]"]


def _rows(shift=False):
    def run(k, tune, seed, acc, typ="branch_commit"):
        params = {f"train_{m}.{key}": value for m in METHODS
                  for key, value in (("shots_per_class", "None" if k is None else k),
                                     ("tune", tune), ("seed", seed))}
        if k is not None:  # the sweep's lighter evaluation, as exp_show gives a list: "[]"
            params |= {key: "[]" for key in sweeps.SHOTS_EVALUATE}
        metrics = {f"{m}.{key}": acc - drop for m in METHODS
                   for key, drop in (("test_acc", 0.0), ("shift_acc", 0.1))[:1 + shift]}
        return _run(metrics, params, typ=typ)

    return [run(None, "full", 0, 0.80, typ="baseline"), run(None, "full", 1, 0.82),
            run(1, "full", 0, 0.30), run(1, "full", 1, 0.34),
            run(4, "full", 0, 0.55), run(4, "full", 1, 0.61),
            run(16, "full", 0, 0.70),
            run(1, "linear", 0, 0.45), run(4, "linear", 0, 0.50), run(16, "linear", 0, 0.60),
            run(4, "lora", 0, 0.52),
            {**run(4, "full", 2, 0.99), "train_clip.lr": 0.5}]  # another sweep's run


def test_the_report_gives_each_arms_curve_zero_shot_full_data_and_what_they_say(tmp_path):
    found = shots.shots_found(_rows(), {"clip": 0.40, "sglip": 0.40, "aclip": 0.40})
    clip = found["clip"]
    assert clip["arms"]["full fine-tuning"] == {1: pytest.approx([0.30, 0.34]),
                                                4: pytest.approx([0.55, 0.61]),
                                                16: pytest.approx([0.70])}
    assert clip["arms"]["LoRA (rank 4)"] == {4: pytest.approx([0.52])}
    assert clip["full_data"] == pytest.approx([0.80, 0.82]) and clip["zero_shot"] == 0.40
    table, written = shots.report_shots(tmp_path, _rows(), {"test_acc": {"clip": 0.40}})
    assert written == [tmp_path / "shots.md", tmp_path / "shots.png"]
    assert "| Model | Arm | 1 shot | 4 shots | 16 shots | All images |" in table
    assert "| **CLIP** | zero-shot | 40.0 | 40.0 | 40.0 | 40.0 |" in table
    assert "| **CLIP** | full fine-tuning | 32.0 ± 2.8 | 58.0 ± 4.2 | 70.0 ± — | 81.0 ± 1.4 |" \
        in table
    assert "| **CLIP** | linear probe | 45.0 ± — | 50.0 ± — | 60.0 ± — | — |" in table
    assert "- **CLIP**: full fine-tuning beats zero-shot (40.0%) from 4 shot(s) a class on; " \
           "linear probe above full fine-tuning at k = 1; LoRA (rank 4) above full " \
           "fine-tuning at no k both ran." in table
    assert "- **SigLIP**: full fine-tuning beats zero-shot" not in table  # no zero-shot given
    assert "## Shifted test" not in table  # the runs have no shift split
    assert (tmp_path / "shots.md").read_text() == table
    figure = shots.shots_figure({"test_acc": found}, tmp_path / "again.png")
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["0", "1", "4", "16"]
    full = next(line for line in axis.get_lines() if line.get_label() == "full fine-tuning")
    assert list(full.get_xdata()) == [1, 4, 16]
    assert list(full.get_ydata()) == pytest.approx([32.0, 58.0, 70.0])


def test_a_curve_that_dips_back_under_zero_shot_is_said_so():
    found = {"clip": {"arms": {"full fine-tuning": {1: [0.30], 4: [0.50], 16: [0.35]}},
                      "full_data": [], "zero_shot": 0.40}}
    assert shots.findings(found) == ["- **CLIP**: full fine-tuning beats zero-shot (40.0%) at "
                                     "k = 4 but not from any k on."]
    found["clip"]["arms"]["full fine-tuning"][4] = [0.39]
    assert shots.findings(found) == ["- **CLIP**: full fine-tuning stays at or below zero-shot "
                                     "(40.0%) at every k measured."]


def test_without_shots_runs_the_report_is_refused_and_nothing_written(tmp_path):
    (tmp_path / "shots.md").write_text("the committed report")
    with pytest.raises(StageError, match="no finished shots experiments.*experiments shots "
                                         "--shots 1 2 4 8 16"):
        shots.report_shots(tmp_path, _rows()[:2], {"test_acc": {"clip": 0.4}})
    assert (tmp_path / "shots.md").read_text() == "the committed report"
    assert not (tmp_path / "shots.png").exists()


def test_zero_shot_is_read_from_each_models_report_at_the_commit():
    reports = {"metrics/clip/report.json": {"zero_shot_accuracy": {"test": 0.41},
                                            "shift": {"zero_shot_accuracy": 0.37}},
               "metrics/aclip/report.json": {"zero_shot_accuracy": {"test": 0.43}},  # no shift
               "metrics/sglip/report.json": {"scores": {}}}  # from scratch: no zero-shot

    def read(path, rev):
        assert rev == "abc"
        if path not in reports:
            raise FileNotFoundError(path)
        return json.dumps(reports[path])

    assert shots.zero_shot_of(_rows(), read) == {"test_acc": {"clip": 0.41, "aclip": 0.43},
                                                 "shift_acc": {"clip": 0.37}}


def test_runs_with_a_shift_split_get_the_shifted_tests_table_findings_and_figure_row(tmp_path):
    table, _ = shots.report_shots(tmp_path, _rows(shift=True),
                                  {"test_acc": {"clip": 0.40}, "shift_acc": {"clip": 0.35}})
    test, shift = table.split("## Shifted test")
    assert test.startswith("## Test (in distribution)")
    assert "| **CLIP** | full fine-tuning | 32.0 ± 2.8 | 58.0 ± 4.2 | 70.0 ± — | 81.0 ± 1.4 |" \
        in test
    assert "| **CLIP** | zero-shot | 35.0 | 35.0 | 35.0 | 35.0 |" in shift
    assert "| **CLIP** | full fine-tuning | 22.0 ± 2.8 | 48.0 ± 4.2 | 60.0 ± — | 71.0 ± 1.4 |" \
        in shift
    assert "- **CLIP**: full fine-tuning beats zero-shot (35.0%) from 4 shot(s) a class on" \
        in shift
    figure = shots.shots_figure({metric: shots.shots_found(_rows(shift=True), {}, metric)
                                 for metric in shots.METRICS}, tmp_path / "both.png")
    assert [axis.get_title() for axis in figure.axes] == [
        "CLIP: test (in distribution)", "SigLIP: test (in distribution)",
        "A-CLIP: test (in distribution)", "CLIP: shifted test", "SigLIP: shifted test",
        "A-CLIP: shifted test"]
    full = next(line for line in figure.axes[3].get_lines()
                if line.get_label() == "full fine-tuning")
    assert list(full.get_ydata()) == pytest.approx([22.0, 48.0, 60.0])
