"""The data-efficiency report (`python -m harclip.experiments report shots`): test accuracy,
and shifted-test accuracy where the runs have a shift split, against the number of training
images per class, per model and arm (full fine-tuning, a linear probe, LoRA), mean ± std over
seeds, with zero-shot as the 0-shot point and full data as a line, and what the measured
curves say: from how many shots fine-tuning beats zero-shot, and where a probe or LoRA
overtakes full fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

from harclip.config.schema import LABELS, METHODS
from harclip.experiments.report import mean_pm, mean_std, per_seed, value, varying_only
from harclip.experiments.sweeps import SHOTS_ARMS, SHOTS_EVALUATE
from harclip.runtime.errors import StageError

FREE = {f"train_{m}.{key}" for m in METHODS for key in ("shots_per_class", "tune", "seed")} \
    | set(SHOTS_EVALUATE)
"""The params a shots run may differ in from the commit's (its evaluation is the lighter one)."""
FULL = SHOTS_ARMS[0][0]
METRICS = {"test_acc": "Test (in distribution)", "shift_acc": "Shifted test"}
"""The accuracies a shots report tabulates (eval.json's keys), each where the runs have it."""
PROTOCOL = ("Every run trains for the commit's `epochs`, so a smaller k takes fewer optimiser "
            "steps, and each picks its checkpoint and temperature on the whole val split (more "
            "labels than k a class: CoOp's protocol has none to spare). Accuracy, mean ± std "
            "over the seeds; zero-shot is the pretrained start with its text head. The "
            "findings compare means: a difference under a figure's standard error "
            "(√(p(1 − p)/n), about 2 points at 375 test images) says nothing.\n")
"""What the curves hold fixed and what they do not, under every shots table."""


def zero_shot_of(rows: list[dict], read=None) -> dict[str, dict[str, float]]:
    """Per metric (METRICS), each model's zero-shot accuracy (the pretrained start with its
    text head: it depends on neither the shots nor the seed), from report.json at the first
    row's commit (`read(path, rev)`, DVC's by default); a model or split without one is left
    out."""
    from dvc.exceptions import DvcException

    if read is None:
        import dvc.api

        read = dvc.api.read
    found: dict[str, dict[str, float]] = {metric: {} for metric in METRICS}
    for method in METHODS if rows else ():
        try:
            report = json.loads(read(f"metrics/{method}/report.json", rev=rows[0]["rev"]))
        except (DvcException, FileNotFoundError, ValueError):
            continue  # no report: no 0-shot point
        for metric, where in (("test_acc", ("zero_shot_accuracy", "test")),
                              ("shift_acc", ("shift", "zero_shot_accuracy"))):
            try:
                found[metric][method] = float(report[where[0]][where[1]])
            except (KeyError, TypeError, ValueError):
                continue  # no pretrained start, or no such split
    return found


def shots_found(rows: list[dict], zero_shot: dict[str, float], metric: str = "test_acc") \
        -> dict:
    """Per model: each arm's `metric` (an eval.json key) over seeds at each k, full
    fine-tuning's on the whole training split, and zero-shot's."""
    rows = varying_only(rows, FREE)
    found = {}
    for method in METHODS:
        shots_key, tune_key = f"train_{method}.shots_per_class", f"train_{method}.tune"
        ks = sorted({int(value(row, shots_key)) for row in rows
                     if value(row, shots_key) is not None})
        arms = {}
        for label, tune in SHOTS_ARMS:
            curve = {k: _measured(per_seed([row for row in rows if value(row, tune_key) == tune
                                            and value(row, shots_key) == k], method, (metric,))
                                  [metric]) for k in ks}
            if curve := {k: accs for k, accs in curve.items() if accs}:
                arms[label] = curve
        full_data = per_seed([row for row in rows if value(row, shots_key) is None
                              and value(row, tune_key) == "full"], method, (metric,))
        found[method] = {"arms": arms, "full_data": _measured(full_data[metric]),
                         "zero_shot": zero_shot.get(method)}
    return found


def _measured(values: list) -> list[float]:
    """The seeds' values a run recorded (a run without the split has none)."""
    return [v for v in values if v is not None]


def findings(found: dict) -> list[str]:
    """What the measured means say, a line per model: the fewest shots from which full
    fine-tuning stays above zero-shot, and the shots at which a probe or LoRA is above full
    fine-tuning."""
    lines = []
    for method, entry in found.items():
        full = {k: mean_std(v)[0] for k, v in entry["arms"].get(FULL, {}).items()}
        if not full:
            continue
        said = []
        if (zero_shot := entry["zero_shot"]) is not None:
            above = [k for k in full if full[k] > zero_shot]
            onwards = [k for k in above if all(full[j] > zero_shot for j in full if j >= k)]
            said.append(f"full fine-tuning beats zero-shot ({zero_shot:.1%}) from "
                        f"{min(onwards)} shot(s) a class on" if onwards else
                        f"full fine-tuning beats zero-shot ({zero_shot:.1%}) at k = "
                        f"{', '.join(map(str, above))} but not from any k on" if above else
                        f"full fine-tuning stays at or below zero-shot ({zero_shot:.1%}) at "
                        f"every k measured")
        for label, curve in entry["arms"].items():
            if label == FULL:
                continue
            ahead = [k for k, v in curve.items() if k in full and mean_std(v)[0] > full[k]]
            said.append(f"{label} above full fine-tuning at k = {', '.join(map(str, ahead))}"
                        if ahead else f"{label} above full fine-tuning at no k both ran")
        lines.append(f"- **{LABELS[method]}**: {'; '.join(said)}.")
    return lines


def shots_table(found: dict) -> str:
    ks = sorted({k for entry in found.values() for curve in entry["arms"].values()
                 for k in curve})
    lines = ["| Model | Arm | " + " | ".join(f"{k} shot{'s' * (k > 1)}" for k in ks)
             + " | All images |", "| :-- | :-- |" + " :-: |" * (len(ks) + 1)]
    for method, entry in found.items():
        if entry["zero_shot"] is not None:
            lines.append(f"| **{LABELS[method]}** | zero-shot | "
                         + " | ".join(f"{entry['zero_shot'] * 100:.1f}" for _ in ks)
                         + f" | {entry['zero_shot'] * 100:.1f} |")
        for label, curve in entry["arms"].items():
            full_data = mean_pm(entry["full_data"]) if label == FULL and entry["full_data"] else "—"
            lines.append(f"| **{LABELS[method]}** | {label} | "
                         + " | ".join(mean_pm(curve[k]) if k in curve else "—" for k in ks)
                         + f" | {full_data} |")
    return "\n".join(lines) + "\n"


def shots_figure(by_metric: dict[str, dict], path: Path):
    """A row per metric (test, then the shift), a panel per model: accuracy against shots per
    class (log axis), an arm a line with its std over seeds shaded, zero-shot the point at 0
    and full data a line. Returns the figure, for the tests to read."""
    from matplotlib.figure import Figure

    models = [m for m in METHODS if any(found.get(m, {}).get("arms")
                                        for found in by_metric.values())]
    fig = Figure(figsize=(5 * len(models), 4.2 * len(by_metric)), layout="constrained")
    grid = fig.subplots(len(by_metric), len(models), sharey="row", squeeze=False)
    colours = dict(zip([label for label, _ in SHOTS_ARMS], ["#1f77b4", "#ff7f0e", "#2ca02c"],
                       strict=True))
    for axes, (metric, found) in zip(grid, by_metric.items(), strict=True):
        for axis, method in zip(axes, models, strict=True):
            _shots_panel(axis, found.get(method, {"arms": {}, "full_data": [],
                                                  "zero_shot": None}), colours)
            axis.set_title(f"{LABELS[method]}: {METRICS[metric].lower()}")
        axes[0].set(ylabel="accuracy (%)")
    grid[0][0].legend(fontsize="small", loc="lower right")
    fig.suptitle("Few labels: accuracy against shots per class (mean ± std over seeds)")
    fig.savefig(path, dpi=120)
    return fig


def _shots_panel(axis, entry: dict, colours: dict) -> None:
    ks = sorted({k for curve in entry["arms"].values() for k in curve})
    for label, curve in entry["arms"].items():
        at = sorted(curve)
        means, stds = map(list, zip(*(mean_std(curve[k]) for k in at), strict=True))
        axis.plot(at, [m * 100 for m in means], marker="o", color=colours[label], label=label)
        axis.fill_between(at, [(m - s) * 100 for m, s in zip(means, stds, strict=True)],
                          [(m + s) * 100 for m, s in zip(means, stds, strict=True)],
                          color=colours[label], alpha=0.15)
    if entry["zero_shot"] is not None:
        axis.plot([0.5], [entry["zero_shot"] * 100], marker="*", markersize=12,
                  color="black", linestyle="none", label="zero-shot (0 shots)")
    if entry["full_data"]:
        mean, std = mean_std(entry["full_data"])
        axis.axhline(mean * 100, color="#7f7f7f", linestyle="--",
                     label="full fine-tuning, all images")
        axis.axhspan((mean - std) * 100, (mean + std) * 100, color="#7f7f7f", alpha=0.15)
    axis.set_xscale("log", base=2)
    axis.set_xticks([0.5, *ks], ["0", *map(str, ks)])
    axis.set(xlabel="training images per class (log scale)")
    axis.grid(alpha=0.3)


def report_shots(out: Path, rows: list[dict], zero_shot: dict[str, dict[str, float]]) \
        -> tuple[str, list[Path]]:
    """docs/results' shots.md (a table and the findings per metric the runs have) and
    shots.png; refused, leaving both as they were, without a finished shots run."""
    by_metric = {metric: shots_found(rows, zero_shot.get(metric, {}), metric)
                 for metric in METRICS}
    by_metric = {metric: found for metric, found in by_metric.items()
                 if any(entry["arms"] for entry in found.values())}
    if "test_acc" not in by_metric:
        raise StageError(f"no finished shots experiments, so {out / 'shots.md'} is left as "
                         f"it was: queue them with `python -m harclip.experiments shots "
                         f"--shots 1 2 4 8 16 --seeds 0 1 2`, and report once `dvc queue "
                         f"status` shows them done")
    table = "".join(f"## {METRICS[metric]}\n\n{shots_table(found)}\n"
                    + "\n".join(findings(found)) + "\n\n"
                    for metric, found in by_metric.items()) + PROTOCOL
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "shots.md", out / "shots.png"]
    shots_figure(by_metric, written[1])
    written[0].write_text(table)
    return table, written
