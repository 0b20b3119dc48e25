"""Tables and figures of finished DVC experiments (`dvc.api.exp_show`'s rows): the seeds,
the token-choice ablation and the fine-tuning tools, as mean ± standard deviation over seeds
(`python -m harclip.experiments report`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harclip.config.params import SHARED, file_sections
from harclip.config.schema import LABELS, METHODS
from harclip.experiments.sweeps import ABLATION, FINETUNE, FINETUNE_KEYS
from harclip.runtime.errors import StageError, first_line

FREE = {
    "seeds": {f"train_{m}.seed" for m in METHODS},
    "ablation": {"train_aclip.seed", "train_aclip.aclip.saliency", "train_aclip.aclip.keep_ratio"},
    "finetune": {f"train_{m}.{key}" for m in METHODS for key in (*FINETUNE_KEYS, "seed")},
}
"""The params each report's runs may differ in from the commit's (a run differing in others
belongs to another sweep)."""
QUEUE = {"seeds": "seeds --seeds 1 2", "ablation": "ablation --seeds 0 1 2",
         "finetune": "finetune --seeds 0 1 2"}
"""How each report's runs are queued (`python -m harclip.experiments ...`)."""


def value(row: dict, name: str):
    """A column of `dvc.api.exp_show`'s flat rows: params as `section.key`, metrics as
    `key` or, where two files share it, `path:key`."""
    found = row[name] if name in row else \
        next((v for k, v in row.items() if k.endswith(f":{name}")), None)
    return _plain(found)


def _plain(found):
    """exp_show writes null and boolean params as the strings "None", "True" and "False"."""
    return {"None": None, "True": True, "False": False}.get(found, found) \
        if isinstance(found, str) else found


def finished_runs(revs: list[str] | None = None) -> list[dict]:
    """Commits (the current one by default) and their finished experiments (not the
    workspace, which repeats one of them), as `dvc.api.exp_show` rows with each model's
    training params spelled out (`per_model_params`); the commits first, in the order given,
    so a seed's first run is the first commit's."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import CloneError

    try:
        shown = dvc.api.exp_show(revs=revs)
    except CloneError:  # dvc's name for "no git repository here"
        raise StageError("not inside a git repository with this project's experiments: run "
                         "it from the project's clone") from None
    except DvcException as err:
        raise StageError(f"DVC cannot list the experiments here ("
                         f"{first_line(err) or type(err).__name__}): run it from "
                         f"the project's clone, at a commit that has them") from None
    rows = [per_model_params(row) for row in shown
            if row.get("rev") != "workspace" and row.get("State") in (None, "Success")]
    return sorted(rows, key=lambda row: row.get("typ") != "baseline")


def per_model_params(row: dict) -> dict:
    """The row with every training key under each model, as its stage saw it:
    `train_<method>.<key>` from the model's own section where the row sets it, else from the
    shared `train` (whose columns are dropped). exp_show writes a key a row lacks as "None",
    as it writes a null, so a model's own null does not override a shared value here. Rows of
    commits from before the shared section (every key per model) come through unchanged."""
    shared = f"{SHARED}."
    out = {key: cell for key, cell in row.items()
           if not key.removeprefix("params.yaml:").startswith(shared)}
    for key, cell in row.items():
        name = key.removeprefix("params.yaml:")
        if not name.startswith(shared):
            continue
        for method in METHODS:
            own = f"train_{method}.{name.removeprefix(shared)}"
            if value(out, own) is None:
                out[own] = cell
    return out


def params_of(row: dict) -> dict:
    """The params.yaml values of a row (its other columns are metrics and dependencies)."""
    sections = set(file_sections())
    return {key.removeprefix("params.yaml:"): _plain(v) for key, v in row.items()
            if key.removeprefix("params.yaml:").split(".", 1)[0] in sections}


def varying_only(rows: list[dict], free: set[str]) -> list[dict]:
    """The rows whose params equal the commit's (the first row's) except the `free` ones (and
    the keys those contain): one sweep's runs, not another's."""
    if not rows:
        return []

    def fixed(row: dict) -> dict:
        return {k: v for k, v in params_of(row).items()
                if not any(k == f or k.startswith(f"{f}.") for f in free)}
    baseline = fixed(rows[0])
    return [row for row in rows if fixed(row) == baseline]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def mean_pm(values: list[float], scale: float = 100.0, digits: int = 1, sign: str = "") -> str:
    """Mean ± std as a table cell (`sign` "+": the mean's sign written always)."""
    mean, std = mean_std(values)
    spread = f"{std * scale:.{digits}f}" if len(values) > 1 else "—"  # one seed: no spread
    return f"{mean * scale:{sign}.{digits}f} ± {spread}"


def runs_by_seed(rows: list[dict], method: str, metric: str = "test_acc") -> dict[int, dict]:
    """One finished run of `method` per seed, the first with `metric` (a commit, then the
    newest), in seed order of appearance; seeds as integers, however exp_show typed them."""
    runs: dict[int, dict] = {}
    for row in rows:
        if value(row, f"{method}.{metric}") is not None:
            runs.setdefault(int(value(row, f"train_{method}.seed")), row)
    return runs


def per_seed(rows: list[dict], method: str,
             keys: tuple[str, ...] = ("test_acc", "val_acc", "epoch_s")) -> dict:
    """One finished run of `method` per seed (`runs_by_seed`) → its `keys` (test and val
    accuracy and time per epoch), as lists in seed order of appearance."""
    runs = runs_by_seed(rows, method)
    return {"seeds": list(runs),
            **{key: [value(r, f"{method}.{key}") for r in runs.values()] for key in keys}}


def seeds_table(rows: list[dict]) -> tuple[str, dict]:
    """Per model: test and val accuracy and time per epoch, mean ± std over the runs that
    differ from each other only in their seeds."""
    rows = varying_only(rows, FREE["seeds"])
    found = {method: per_seed(rows, method) for method in METHODS}
    for entry in found.values():
        entry["seeds"] = sorted(entry["seeds"])
    lines = ["| Model | Seeds | Test accuracy (%) | Val accuracy (%) | Time per epoch (s) |",
             "| :-- | :-: | :-: | :-: | :-: |"]
    lines += [f"| **{LABELS[m]}** | {', '.join(map(str, f['seeds']))} | {mean_pm(f['test_acc'])} "
              f"| {mean_pm(f['val_acc'])} | {mean_pm(f['epoch_s'], 1.0)} |"
              for m, f in found.items() if f["seeds"]]
    return "\n".join(lines) + "\n", found


def ablation_table(rows: list[dict]) -> tuple[str, dict]:
    """Per (token choice, keep ratio): A-CLIP's test and val accuracy and time per epoch,
    mean ± std over seeds."""
    rows = varying_only(rows, FREE["ablation"])
    found, lines = {}, ["| Tokens the student sees | Keep ratio | Seeds | Test accuracy (%) | "
                        "Val accuracy (%) | Time per epoch (s) |",
                        "| :-- | :-: | :-: | :-: | :-: | :-: |"]
    for label, saliency, keep in ABLATION:
        runs = per_seed([row for row in rows
                         if value(row, "train_aclip.aclip.saliency") == saliency
                         and value(row, "train_aclip.aclip.keep_ratio") == keep], "aclip")
        if not runs["seeds"]:
            continue
        entry = {**runs, "label": label, "keep": keep, "seeds": len(runs["seeds"])}
        found[(saliency, keep)] = entry
        lines.append(f"| {label} | {keep:g} | {entry['seeds']} | {mean_pm(entry['test_acc'])} | "
                     f"{mean_pm(entry['val_acc'])} | {mean_pm(entry['epoch_s'], 1.0)} |")
    return "\n".join(lines) + "\n", found


def ablation_figure(found: dict, path: Path) -> None:
    """Test accuracy (mean ± std over seeds) and time per epoch per configuration."""
    from matplotlib.figure import Figure

    entries = [found[k] for k in sorted(found, key=lambda k: (k[1], k[0]))]
    names = [f"{e['label']}\nkeep {e['keep']:g}" for e in entries]
    colours = ["#2ca02c" if "attentive" in e["label"] else
               "#ff7f0e" if "random" in e["label"] else "#7f7f7f" for e in entries]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    accuracy, speed = fig.subplots(1, 2)
    for axis, key, scale, title in ((accuracy, "test_acc", 100, "Test accuracy (%)"),
                                    (speed, "epoch_s", 1, "Time per epoch (s)")):
        means, stds = zip(*(mean_std(e[key]) for e in entries), strict=True)
        axis.barh(names, [m * scale for m in means], xerr=[s * scale for s in stds],
                  color=colours, capsize=3)
        axis.set(title=title)
        axis.grid(axis="x", alpha=0.3)
        axis.invert_yaxis()
    speed.set_yticklabels([])
    fig.suptitle("A-CLIP stage: which tokens the student sees (mean ± std over seeds)")
    fig.savefig(path, dpi=120)


def finetune_found(rows: list[dict]) -> dict:
    """Per model and arm: test accuracy, time per epoch, peak memory and trainable parameters
    over seeds; and WiSE-FT at the α chosen on val, from full fine-tuning's evaluations."""
    rows = varying_only(rows, FREE["finetune"])
    if not rows:
        return {}
    baseline = params_of(rows[0])
    keys = ("test_acc", "epoch_s", "peak_mb", "trainable", "wise_test_acc")
    found: dict = {m: {} for m in METHODS}
    for label, arm in FINETUNE:
        for method in METHODS:
            wanted = {f"train_{method}.{key}": arm.get(key, baseline.get(f"train_{method}.{key}"))
                      for key in FINETUNE_KEYS}
            runs = per_seed([row for row in rows if all(
                value(row, k) == v for k, v in wanted.items())], method, keys)
            if runs["seeds"]:
                found[method][label] = runs
    for arms in found.values():
        full = arms.get(FINETUNE[0][0])
        if full and None not in full["wise_test_acc"]:
            arms["WiSE-FT at the α chosen on val"] = {**full, "test_acc": full["wise_test_acc"]}
        for label, entry in arms.items():
            entry["paired"] = _paired(entry, full) if full and label != FINETUNE[0][0] else []
    return found


def _paired(arm: dict, full: dict) -> list[float]:
    """The arm's test accuracy minus full fine-tuning's at each seed both ran (a seed fixes the
    data order, the augmentations and any random initialisation: where two arms' outcomes move
    together with it, the difference is steadier than either); seeds full fine-tuning lacks
    are left out, and the table says how many pairs remain."""
    full_at = dict(zip(full["seeds"], full["test_acc"], strict=True))
    return [acc - full_at[seed] for seed, acc in zip(arm["seeds"], arm["test_acc"], strict=True)
            if seed in full_at]


def _against_full(entry: dict) -> str:
    if not entry["paired"]:
        return "—"
    pairs = len(entry["paired"])
    return mean_pm(entry["paired"], sign="+") + (
        f" ({pairs} seed{'s' * (pairs > 1)})" if pairs < len(entry["seeds"]) else "")


def finetune_table(found: dict) -> str:
    lines = []
    for method, arms in found.items():
        lines += [f"### {LABELS[method]}", "",
                  "| Arm | Seeds | Test accuracy (%) | Against full fine-tuning, same seeds "
                  "(points) | Time per epoch (s) | Peak memory (MB) | Trainable parameters |",
                  "| :-- | :-: | :-: | :-: | :-: | :-: | --: |"]
        lines += [f"| {label} | {len(e['seeds'])} | {mean_pm(e['test_acc'])} | "
                  f"{_against_full(e)} | {mean_pm(e['epoch_s'], 1.0)} | "
                  f"{mean_pm(e['peak_mb'], 1.0, 0)} | {int(e['trainable'][0]):,} |"
                  for label, e in arms.items()]
        lines.append("")
    return "\n".join(lines)


def finetune_figure(found: dict, path: Path):
    """Per model, each arm against full fine-tuning at the same seeds (test accuracy, points,
    mean ± std, on one scale for every model; full fine-tuning's spread over seeds shaded),
    and each arm's peak memory as points (WiSE-FT's is full fine-tuning's, not repeated).
    Arms far outside the others' range (from scratch) are left to the table, so that the
    small differences stay readable. Returns the figure, for the tests to read."""
    from matplotlib.figure import Figure

    found = {method: arms for method, arms in found.items() if arms}
    against = {method: {label: entry["paired"] for label, entry in arms.items()
                        if entry["paired"] and "scratch" not in label}
               for method, arms in found.items()}
    spreads = [mean_std(values) for arms in against.values() for values in arms.values()]
    ends = [(m + sign * s) * 100 for m, s in spreads for sign in (-1, 1)] + [0.0]
    low, high = min(ends), max(ends)
    fig = Figure(figsize=(15, 8), layout="constrained")
    axes = fig.subplots(2, len(found), sharey="row", squeeze=False)
    for column, (method, arms) in enumerate(found.items()):
        axis = axes[0][column]
        if against[method]:
            labels = list(against[method])
            means, stds = zip(*map(mean_std, against[method].values()), strict=True)
            axis.barh(labels, [m * 100 for m in means], xerr=[s * 100 for s in stds],
                      capsize=3, color=["#7f7f7f" if round(m * 100, 1) == 0 else
                                        "#2ca02c" if m > 0 else "#d62728" for m in means])
            for label, values in against[method].items():  # the table's cell, aside
                axis.text(0.98, label, mean_pm(values, sign="+"), ha="right", va="center",
                          fontsize="small", transform=axis.get_yaxis_transform())
            mean, spread = mean_std(arms[FINETUNE[0][0]]["test_acc"])
            axis.axvspan(-spread * 100, spread * 100, color="#7f7f7f", alpha=0.2,
                         label="full fine-tuning's std over seeds")
            axis.axvline(0, color="black", linewidth=0.8)
            axis.legend(loc="lower left", fontsize="small")
            axis.set(xlim=(low - 0.05 * (high - low), high + 0.4 * (high - low)),
                     title=f"{LABELS[method]}: test accuracy against full fine-tuning\n"
                           f"({mean * 100:.1f} %) at the same seeds, points")
        axis = axes[1][column]
        shown = [label for label in arms if not label.startswith("WiSE-FT")]
        means, stds = zip(*(mean_std(arms[label]["peak_mb"]) for label in shown), strict=True)
        axis.errorbar(means, shown, xerr=stds, fmt="o", capsize=3)
        axis.set(title=f"{LABELS[method]}: peak memory above the image cache (MB)")
        for axis in axes[0][column], axes[1][column]:
            axis.grid(axis="x", alpha=0.3)
    for row in axes:
        row[0].invert_yaxis()  # the rows share their y axis: the arms top-down, as queued
    fig.suptitle("Fine-tuning tools on the pretrained miniature (mean ± std over seeds; "
                 "the same seeds paired)")
    fig.savefig(path, dpi=120)
    return fig


def report(kind: str, out: Path, rows: list[dict]) -> tuple[str, list[Path]]:
    """The `kind` report's table and the files written: its markdown table and, for the
    ablation and the fine-tuning tools, its figure. Refused, leaving every file as it was,
    unless the runs hold what the report compares (a table of the commit's own run, or of
    seeds of one configuration, would overwrite the committed results with next to nothing):
    the seeds report needs every model at two seeds or more, the ablation two of its
    configurations, the fine-tuning report a model with an arm beside full fine-tuning."""
    refusal = StageError(f"no finished {kind} experiments beside the commit's own "
                         f"configuration, so {out / f'{kind}.md'} is left as it was: queue "
                         f"them with `python -m harclip.experiments {QUEUE[kind]}`, and "
                         f"report once `dvc queue status` shows them done")
    figure = None
    if kind == "seeds":
        table, found = seeds_table(rows)
        enough = all(len(entry["seeds"]) >= 2 for entry in found.values())
    elif kind == "finetune":
        found, figure = finetune_found(rows), finetune_figure
        enough = any(len([label for label in arms if not label.startswith("WiSE-FT")]) >= 2
                     for arms in found.values())
    else:
        table, found = ablation_table(rows)
        figure, enough = ablation_figure, len(found) >= 2
    if not enough:
        raise refusal
    if kind == "finetune":
        table = finetune_table(found)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{kind}.md"]
    if figure:
        written.append(out / f"{kind}.png")
        figure(found, written[-1])
    written[0].write_text(table)
    return table, written
