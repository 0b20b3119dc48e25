"""The shift report (`python -m harclip.experiments report shift`): per model and seed, test
against shifted-test accuracy and their gap, WiSE-FT's α chosen on val and the α best on the
shift (an oracle: reported, never chosen by), the zero-shot start's figures, WiSE-FT's curve
averaged over the seeds, and what those numbers say, computed from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harclip.config.schema import LABELS, METHODS
from harclip.experiments.report import FREE, runs_by_seed, value, varying_only
from harclip.runtime.errors import StageError

HEAD = ("The commit's run and its seeds (`python -m harclip.experiments seeds`), each model "
        "fine-tuned on the training split and scored on its test split and its shifted test "
        "split. Gap: test minus shifted test, points. The α best on the shift is an oracle, "
        "reported and never chosen by; as the best of several on the very split it is scored "
        "on, it is biased upward. Effective robustness here is measured against the "
        "zero-shot start's own gap (a slope-1 line through the start, not Taori et al.'s "
        "line fitted over many models).\n\n")


def shift_found(rows: list[dict], read=None) -> dict:
    """Per model with a shift split: each seed's report.json (the first run per seed, read at
    its revision by `read(path, rev)`, DVC's by default), in seed order, with eval.json's
    val-chosen WiSE-FT α beside it as `wise_alpha`."""
    if read is None:
        import dvc.api

        read = dvc.api.read
    rows = varying_only(rows, FREE["seeds"])
    found = {}
    for method in METHODS:
        if runs := runs_by_seed(rows, method, "shift_acc"):
            found[method] = {seed: {**_report(read, method, row["rev"]),
                                    "wise_alpha": value(row, f"{method}.wise_alpha")}
                             for seed, row in sorted(runs.items())}
    return found


def _report(read, method: str, rev: str) -> dict:
    from dvc.exceptions import DvcException

    path = f"metrics/{method}/report.json"
    try:
        report = json.loads(read(path, rev=rev))
    except (DvcException, OSError, ValueError) as err:
        raise StageError(f"cannot read {path} at {rev} ({type(err).__name__}): run the "
                         f"report from the project's clone, where that experiment is") from None
    if "test" not in report.get("scores", {}):  # the shift is there: eval.json has shift_acc
        raise StageError(f"{path} at {rev} has no test split: shift.md compares the test "
                         f"split with the shift, so the data set needs both")
    return report


def _accuracy(report: dict, split: str) -> float:
    return report["scores"][split]["accuracy"]


def _pct(accuracy: float) -> str:
    return f"{accuracy * 100:.1f}%"


def _alpha(curve: dict, alpha: float) -> str:
    at = curve[_key(curve, alpha)]
    return f"α {alpha:g}: {_pct(at['test'])} / {_pct(at['shift'])}"


def _key(curve: dict, alpha: float) -> str:
    """report.json's key for α (JSON wrote the floats as strings: "1", "0.25")."""
    for key in curve:
        if float(key) == alpha:
            return key
    raise StageError(f"WiSE-FT's curve has no α {alpha:g} (it has {', '.join(curve)}): the "
                     f"seeds' runs differ in evaluate.wise_alphas")


def seed_table(found: dict) -> str:
    lines = ["| Model | Seed | Test | Shifted test | Gap | WiSE-FT α chosen on val: test / "
             "shifted | α best on the shift: test / shifted |", "| :-- | :-: |" + " :-: |" * 5]
    for method, seeds in found.items():
        for seed, report in seeds.items():
            test, shift = _accuracy(report, "test"), _accuracy(report, "shift")
            curve = report.get("wise_ft") or {}
            chosen = _alpha(curve, report["wise_alpha"]) if curve else "—"
            best = report["shift"].get("wise_alpha_best_on_shift")
            oracle = _alpha(curve, best) if curve and best is not None else "—"
            lines.append(f"| **{LABELS[method]}** | {seed} | {_pct(test)} | {_pct(shift)} | "
                         f"{(test - shift) * 100:.1f} | {chosen} | {oracle} |")
        first = next(iter(seeds.values()))
        if (zero := first["shift"].get("zero_shot_accuracy")) is not None:
            test = first["zero_shot_accuracy"]["test"]
            lines.append(f"| **{LABELS[method]}** | zero-shot | {_pct(test)} | {_pct(zero)} | "
                         f"{(test - zero) * 100:.1f} | — | — |")
    return "\n".join(lines) + "\n"


def mean_curve(found: dict) -> dict[str, dict[float, tuple[float, float]]]:
    """Per model with WiSE-FT in every seed's report: α → (test, shift) mean over seeds."""
    curves = {}
    for method, seeds in found.items():
        if not all(report.get("wise_ft") for report in seeds.values()):
            continue
        alphas = sorted({float(a) for report in seeds.values() for a in report["wise_ft"]})
        curves[method] = {alpha: tuple(float(np.mean([
            report["wise_ft"][_key(report["wise_ft"], alpha)][split]
            for report in seeds.values()])) for split in ("test", "shift"))
            for alpha in alphas}
    return curves


def curve_table(curves: dict) -> str:
    alphas = sorted({alpha for curve in curves.values() for alpha in curve})
    lines = ["| Model | " + " | ".join(f"α {a:g}" for a in alphas) + " |",
             "| :-- |" + " :-: |" * len(alphas)]
    for method, curve in curves.items():
        lines.append(f"| **{LABELS[method]}** | " + " | ".join(
            f"{curve[a][0] * 100:.1f} / {curve[a][1] * 100:.1f}" if a in curve else "—"
            for a in alphas) + " |")
    return "\n".join(lines) + "\n"


def findings(found: dict) -> list[str]:
    """Per model: the mean gap fine-tuned against zero-shot's (the effective robustness
    fine-tuning gave up or gained), fine-tuning's gain over zero-shot on both test splits,
    and what the oracle α gains on the shift over the val-chosen one."""
    lines = []
    for method, seeds in found.items():
        reports = list(seeds.values())
        gap = np.mean([_accuracy(r, "test") - _accuracy(r, "shift") for r in reports]) * 100
        said = [f"mean gap {gap:.1f} points over {len(reports)} seed(s)"]
        if (zero := reports[0]["shift"].get("zero_shot_accuracy")) is not None:
            zero_test = reports[0]["zero_shot_accuracy"]["test"]
            zero_gap = (zero_test - zero) * 100
            said.append(f"zero-shot's {zero_gap:.1f}, so fine-tuning "
                        f"{'widened' if gap > zero_gap else 'narrowed'} the gap by "
                        f"{abs(gap - zero_gap):.1f} points (effective robustness "
                        f"{'given up' if gap > zero_gap else 'gained'})")
            gains = [np.mean([_accuracy(r, "test") for r in reports]) - zero_test,
                     np.mean([_accuracy(r, "shift") for r in reports]) - zero]
            said.append(f"its gain over zero-shot is {gains[0] * 100:+.1f} points in "
                        f"distribution and {gains[1] * 100:+.1f} shifted")
        if all(r.get("wise_ft") for r in reports):
            chosen = [float(r["wise_alpha"]) for r in reports]
            gain = np.mean([r["wise_ft"][_key(r["wise_ft"], r["shift"][
                "wise_alpha_best_on_shift"])]["shift"] - r["wise_ft"][_key(r["wise_ft"], a)]
                ["shift"] for r, a in zip(reports, chosen, strict=True)]) * 100
            said.append(f"WiSE-FT's α chosen on val was 1 in {chosen.count(1.0)} of "
                        f"{len(chosen)}, and the oracle α gains {gain:.1f} points on the "
                        f"shift over it on average")
        lines.append(f"- **{LABELS[method]}**: {'; '.join(said)}.")
    return lines


def standard_errors(found: dict) -> str:
    """A sentence: the binomial standard error (√(p(1 − p)/n)) of one run's test and shifted
    test figures at their mean accuracy and image counts: differences under it say nothing."""
    reports = [report for seeds in found.values() for report in seeds.values()]
    said = []
    for split, name in (("test", "on test"), ("shift", "on the shift")):
        accuracy = np.mean([_accuracy(r, split) for r in reports])
        if count := reports[0].get("images", {}).get(split):
            error = np.sqrt(accuracy * (1 - accuracy) / count) * 100
            said.append(f"{error:.1f} points {name} ({count} images)")
    return f"One run's standard error is about {' and '.join(said)}.\n\n" if said else ""


def report_shift(out: Path, rows: list[dict], read=None) -> tuple[str, list[Path]]:
    """docs/results' shift.md; refused, leaving it as it was, without a run that scored a
    shift split."""
    found = shift_found(rows, read)
    if not found:
        raise StageError(f"no finished run scored a shift split, so {out / 'shift.md'} is "
                         f"left as it was: the data set needs `split = shift` rows (the "
                         f"stand-in's `download.synthetic.shifted_images_per_class`)")
    table = ("# In distribution against the shift, and WiSE-FT's frontier\n\n" + HEAD
             + standard_errors(found) + seed_table(found))
    if curves := mean_curve(found):
        table += ("\nWiSE-FT's curve, mean over the seeds (test / shifted test, %; α 0 is the "
                  "zero-shot start):\n\n" + curve_table(curves))
    table += "\n" + "\n".join(findings(found)) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "shift.md").write_text(table)
    return table, [out / "shift.md"]
