"""The shift report: each seed's report.json read at its run's revision, the per-seed table
with the val-chosen and the oracle WiSE-FT α, the mean curve and the computed findings."""

from __future__ import annotations

import json

import pytest

from harclip.experiments import shift
from harclip.runtime.errors import StageError
from tests.unit.experiments.test_experiments import _run

METHODS = ("clip", "sglip", "aclip")


def _report(test, shifted, curve=None, best=None):
    report = {"scores": {"test": {"accuracy": test}, "shift": {"accuracy": shifted}},
              "images": {"test": 100, "shift": 400},
              "zero_shot_accuracy": {"val": 0.5, "test": 0.60},
              "shift": {"accuracy": shifted, "zero_shot_accuracy": 0.55}}
    if curve:
        report["wise_ft"] = {str(alpha): dict(zip(("val", "test", "shift"), accs, strict=True))
                             for alpha, accs in curve.items()}
        report["shift"]["wise_alpha_best_on_shift"] = best
    return report


REPORTS = {  # (revision, model): report.json; sglip has no shift split, aclip no WiSE-FT
    ("r0", "clip"): _report(0.80, 0.70, {0: (0.5, 0.60, 0.55), 0.5: (0.7, 0.75, 0.72),
                                         1: (0.8, 0.80, 0.70)}, best=0.5),
    ("r1", "clip"): _report(0.84, 0.72, {0: (0.5, 0.60, 0.55), 0.5: (0.9, 0.78, 0.74),
                                         1: (0.8, 0.84, 0.72)}, best=0.5),
    ("r0", "aclip"): _report(0.70, 0.66),
}


def _rows():
    def run(rev, seed, alpha_by_model, typ="branch_commit"):
        metrics = {f"{m}.test_acc": 0.7 for m in METHODS}
        metrics |= {f"{m}.shift_acc": 0.6 for m in METHODS if (rev, m) in REPORTS}
        metrics |= {f"{m}.wise_alpha": a for m, a in alpha_by_model.items()}
        return {**_run(metrics, {f"train_{m}.seed": seed for m in METHODS}, typ=typ),
                "rev": rev}

    # seed 1's α is eval.json's, not its curve's val argmax (0.5): the report must take it
    return [run("r0", 0, {"clip": 1.0}, typ="baseline"), run("r1", 1, {"clip": 1.0}),
            {**run("r9", 2, {"clip": 1.0}), "train_clip.lr": 0.5}]  # another sweep's run


def _read(path, rev):
    model = path.split("/")[1]
    if (rev, model) not in REPORTS:
        raise FileNotFoundError(path)
    return json.dumps(REPORTS[rev, model])


def test_the_table_curve_and_findings_come_from_each_seeds_report(tmp_path):
    table, written = shift.report_shift(tmp_path, _rows(), _read)
    assert written == [tmp_path / "shift.md"] and written[0].read_text() == table
    assert "| **CLIP** | 0 | 80.0% | 70.0% | 10.0 | α 1: 80.0% / 70.0% | α 0.5: 75.0% / 72.0% |" \
        in table
    assert "| **CLIP** | 1 | 84.0% | 72.0% | 12.0 | α 1: 84.0% / 72.0% | " \
           "α 0.5: 78.0% / 74.0% |" in table
    assert "| **CLIP** | zero-shot | 60.0% | 55.0% | 5.0 | — | — |" in table
    assert "| **A-CLIP** | 0 | 70.0% | 66.0% | 4.0 | — | — |" in table
    assert "standard error is about 4.1 points on test (100 images) and 2.3 points on the " \
           "shift (400 images)." in table  # at the mean accuracies, 78.0 and 69.3 %
    assert "SigLIP" not in table  # no shift split
    assert "| 2 |" not in table  # the other sweep's run
    assert "| **CLIP** | 60.0 / 55.0 | 76.5 / 73.0 | 82.0 / 71.0 |" in table
    assert "A-CLIP** | 60.0 / 55.0" not in table  # no WiSE-FT, no curve
    assert ("- **CLIP**: mean gap 11.0 points over 2 seed(s); zero-shot's 5.0, so fine-tuning "
            "widened the gap by 6.0 points (effective robustness given up); its gain over "
            "zero-shot is +22.0 points in distribution and +16.0 shifted; WiSE-FT's α chosen on "
            "val was 1 in 2 of 2, and the oracle α gains 2.0 points on the shift over it on "
            "average.") in table
    assert "- **A-CLIP**: mean gap 4.0 points over 1 seed(s); zero-shot's 5.0, so fine-tuning " \
           "narrowed the gap by 1.0 points (effective robustness gained); its gain over " \
           "zero-shot is +10.0 points in distribution and +11.0 shifted." in table


def test_without_a_run_that_scored_a_shift_the_report_is_refused_and_nothing_written(tmp_path):
    (tmp_path / "shift.md").write_text("the committed report")
    rows = [{k: v for k, v in row.items() if not k.endswith("shift_acc")} for row in _rows()]
    with pytest.raises(StageError, match="no finished run scored a shift split"):
        shift.report_shift(tmp_path, rows, _read)
    assert (tmp_path / "shift.md").read_text() == "the committed report"


def test_a_report_that_cannot_be_read_is_one_line_naming_it():
    rows = _rows()[:1]
    with pytest.raises(StageError, match="cannot read metrics/clip/report.json at r0"):
        shift.shift_found(rows, lambda path, rev: "{not json")


def test_a_report_without_a_test_split_or_with_another_alpha_grid_is_one_line():
    def read(path, rev):
        report = {**REPORTS["r0", "clip"], "scores": {"val": {"accuracy": 0.8},
                                                      "shift": {"accuracy": 0.7}}}
        return json.dumps(report)

    with pytest.raises(StageError, match="report.json at r0 has no test split"):
        shift.shift_found(_rows()[:1], read)
    with pytest.raises(StageError, match="no α 0.75 .*differ in evaluate.wise_alphas"):
        shift._alpha(REPORTS["r0", "clip"]["wise_ft"], 0.75)
