"""Sweeps through DVC's own experiment queue, and the tables and figures that collect them.

    python -m harclip.experiments show                       # every run at a glance
    python -m harclip.experiments seeds --seeds 1 2          # every model at other seeds
    python -m harclip.experiments ablation --seeds 0 1 2     # A-CLIP vs FLIP vs full tokens
    dvc queue status                                         # follow them
    python -m harclip.experiments report seeds --out docs/results
    python -m harclip.experiments report ablation --out docs/results

`seeds` and `ablation` queue one `dvc exp run --queue -S ...` per run and start the queue
(`dvc queue start -j JOBS`); `report` reads every finished experiment of the current commit,
or of the commits `--rev` names (`dvc.api.exp_show`), and writes a markdown table and a
figure of mean ± standard deviation over the seeds.

The ablation varies only how the A-CLIP stage chooses the tokens its student sees, on one
backbone and schedule: attentive (the EMA teacher's [CLS] attention, scored every step or
cached and refreshed every epoch), random (FLIP) and all tokens, at keep ratios 0.5 and 0.75.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from harclip.config import LABELS, METHODS, load_params, section_names

ABLATION = [  # (label, saliency, keep ratio), in the order they are queued
    ("attentive, teacher every step", "teacher", 0.75),
    ("random (FLIP)", "random", 0.75),
    ("all tokens", "random", 1.0),
    ("attentive, cached saliency", "cached", 0.75),
    ("attentive, teacher every step", "teacher", 0.5),
    ("random (FLIP)", "random", 0.5),
    ("attentive, cached saliency", "cached", 0.5),
]
"""Full-token training needs no saliency: `random` at keep ratio 1.0 keeps every token."""


def _dvc(*args: str) -> None:
    subprocess.run(["dvc", *args], check=True)


def queue_seeds(seeds: list[int], jobs: int) -> None:
    """Queue every model at each seed (the same seed for the three), then start the queue
    (`jobs` 0: queue only)."""
    for seed in seeds:
        sets = [arg for method in METHODS for arg in ("-S", f"train_{method}.seed={seed}")]
        _dvc("exp", "run", "--queue", "--name", f"seed-{seed}", *sets)
    if jobs:
        _dvc("queue", "start", "-j", str(jobs))


def queue_ablation(seeds: list[int], jobs: int,
                   keep_ratios: tuple[float, ...] = (0.75, 0.5)) -> None:
    """Queue the A-CLIP stage at every (token choice, keep ratio) and seed, then start (`jobs`
    0: queue only); all tokens (keep 1.0) always. The run params.yaml itself describes is the
    commit's own and is not queued again."""
    aclip = load_params().train_aclip
    own = (aclip.aclip.saliency, aclip.aclip.keep_ratio, aclip.seed)
    for _, saliency, keep in ABLATION:
        if keep not in (*keep_ratios, 1.0):
            continue
        for seed in seeds:
            if (saliency, keep, seed) == own:
                print(f"saliency={saliency} keep_ratio={keep} seed={seed}: params.yaml's own "
                      "run (the commit's results), not queued")
                continue
            _dvc("exp", "run", "--queue", "--name", f"abl-{saliency}-{keep}-s{seed}",
                 "-S", f"train_aclip.aclip.saliency={saliency}",
                 "-S", f"train_aclip.aclip.keep_ratio={keep}",
                 "-S", f"train_aclip.seed={seed}")
    if jobs:
        _dvc("queue", "start", "-j", str(jobs))


def value(row: dict, name: str):
    """A column of `dvc.api.exp_show`'s flat rows: params as `section.key`, metrics as
    `key` or, where two files share it, `path:key`."""
    if name in row:
        return row[name]
    return next((v for k, v in row.items() if k.endswith(f":{name}")), None)


def finished_runs(revs: list[str] | None = None) -> list[dict]:
    """Commits (the current one by default) and their finished experiments (not the
    workspace, which repeats one of them), as `dvc.api.exp_show` rows; the commits first, in
    the order given, so a seed's first run is the first commit's."""
    import dvc.api

    rows = [row for row in dvc.api.exp_show(revs=revs)
            if row.get("rev") != "workspace" and row.get("State") in (None, "Success")]
    return sorted(rows, key=lambda row: row.get("typ") != "baseline")


def params_of(row: dict) -> dict:
    """The params.yaml values of a row (its other columns are metrics and dependencies)."""
    sections = set(section_names())
    return {key.removeprefix("params.yaml:"): v for key, v in row.items()
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


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = mean_std(values)
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def per_seed(rows: list[dict], method: str) -> dict:
    """One finished run of `method` per seed (the first: a commit, then the newest) → its
    test and val accuracy and time per epoch, as lists in seed order of appearance."""
    runs: dict = {}
    for row in rows:
        if value(row, f"{method}.test_acc") is not None:
            runs.setdefault(value(row, f"train_{method}.seed"), row)
    return {"seeds": list(runs),
            **{key: [value(r, f"{method}.{key}") for r in runs.values()]
               for key in ("test_acc", "val_acc", "epoch_s")}}


def seeds_table(rows: list[dict]) -> tuple[str, dict]:
    """Per model: test and val accuracy and time per epoch, mean ± std over the runs that
    differ from each other only in their seeds."""
    rows = varying_only(rows, {f"train_{method}.seed" for method in METHODS})
    found = {method: per_seed(rows, method) for method in METHODS}
    for entry in found.values():
        entry["seeds"] = sorted(int(s) for s in entry["seeds"])
    lines = ["| Model | Seeds | Test accuracy (%) | Val accuracy (%) | Time per epoch (s) |",
             "| :-- | :-: | :-: | :-: | :-: |"]
    lines += [f"| **{LABELS[m]}** | {', '.join(map(str, f['seeds']))} | {_pm(f['test_acc'])} "
              f"| {_pm(f['val_acc'])} | {_pm(f['epoch_s'], 1.0)} |"
              for m, f in found.items() if f["seeds"]]
    return "\n".join(lines) + "\n", found


def ablation_table(rows: list[dict]) -> tuple[str, dict]:
    """Per (token choice, keep ratio): A-CLIP's test and val accuracy and time per epoch,
    mean ± std over seeds."""
    rows = varying_only(rows, {"train_aclip.seed", "train_aclip.aclip.saliency",
                               "train_aclip.aclip.keep_ratio"})
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
        lines.append(f"| {label} | {keep:g} | {entry['seeds']} | {_pm(entry['test_acc'])} | "
                     f"{_pm(entry['val_acc'])} | {_pm(entry['epoch_s'], 1.0)} |")
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


SHOWN = {"test_acc": "test %", "val_acc": "val %", "epoch_s": "s/epoch", "peak_mb": "MB"}
"""Each model's headline columns in `show`, as they are headed."""


def show_table(rows: list[dict]) -> str:
    """A markdown table of the runs: each one's name, the params that differ between them,
    and every model's test and val accuracy, time per epoch and peak memory; the columns
    `dvc exp show` elides in a narrow terminal, and only them."""
    params = [params_of(row) for row in rows]
    varying = sorted(k for k in {k for p in params for k in p}
                     if len({repr(p.get(k)) for p in params}) > 1)
    columns = [(f"{LABELS[m]} {head}", f"{m}.{key}") for m in METHODS
               for key, head in SHOWN.items()]

    def cell(value, key: str) -> str:
        if value is None:
            return "—"
        if key.endswith("_acc"):
            return f"{100 * value:.1f}"
        return f"{value:.1f}" if key.endswith("_s") else f"{value:.0f}"

    lines = ["| run | " + " | ".join([*varying, *(head for head, _ in columns)]) + " |",
             "| :-- | " + " | ".join([":-:"] * (len(varying) + len(columns))) + " |"]
    for row, row_params in zip(rows, params, strict=True):
        name = row.get("Experiment") or f"{str(row.get('rev', ''))[:7]} (commit)"
        cells = [str(row_params.get(key, "—")) for key in varying]
        cells += [cell(value(row, key), key) for _, key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report(kind: str, out: Path, revs: list[str] | None = None) -> str:
    rows = finished_runs(revs)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "seeds":
        table, _ = seeds_table(rows)
    else:
        table, found = ablation_table(rows)
        if found:
            ablation_figure(found, out / "ablation.png")
    (out / f"{kind}.md").write_text(table)
    return table


def main() -> None:
    cli = argparse.ArgumentParser(description="Queue seed sweeps and the token-choice "
                                              "ablation as DVC experiments; collect them.")
    commands = cli.add_subparsers(dest="command", required=True)
    for name, text in (("seeds", "queue every model at other seeds"),
                       ("ablation", "queue A-CLIP vs FLIP vs all tokens at keep 0.5 / 0.75")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--seeds", type=int, nargs="+", required=True)
        command.add_argument("--jobs", type=int, default=1,
                             help="experiments run at once (dvc queue start -j); 0: queue "
                                  "only, to start the queue once after queueing both sweeps")
    commands.choices["ablation"].add_argument(
        "--keep-ratios", type=float, nargs="+", default=[0.75, 0.5],
        help="keep ratios of the masked runs (all tokens, 1.0, always)")
    show = commands.add_parser("show", help="the experiments at a glance: the params that "
                               "differ and every model's headline numbers")
    show.add_argument("--rev", nargs="+", dest="revs",
                      help="commits whose experiments to show (default: the current one)")
    collect = commands.add_parser("report", help="table and figure of finished experiments")
    collect.add_argument("kind", choices=("seeds", "ablation"))
    collect.add_argument("--out", type=Path, default=Path("docs/results"))
    collect.add_argument("--rev", nargs="+", dest="revs",
                         help="the commits the experiments were run on, their params.yaml "
                              "alike (default: the current one)")
    args = cli.parse_args()
    if args.command == "show":
        sys.stdout.write(show_table(finished_runs(args.revs)))
    elif args.command == "seeds":
        queue_seeds(args.seeds, args.jobs)
    elif args.command == "ablation":
        queue_ablation(args.seeds, args.jobs, tuple(args.keep_ratios))
    else:
        sys.stdout.write(report(args.kind, args.out, args.revs))


if __name__ == "__main__":
    main()
