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
import json
import subprocess
import sys
from pathlib import Path

from harclip.config import METHODS, load_params

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
FINETUNE = [  # (label, what each train_* section sets), in the order they are queued
    ("full fine-tuning", {}),
    ("+ layer decay 0.75", {"layer_decay": 0.75}),
    ("+ EMA of the weights 0.99", {"ema_decay": 0.99}),
    ("+ label smoothing 0.1", {"label_smoothing": 0.1}),
    ("all three", {"layer_decay": 0.75, "ema_decay": 0.99, "label_smoothing": 0.1}),
    ("linear probe", {"tune": "linear"}),
    ("LoRA, rank 4", {"tune": "lora"}),
    ("gradient checkpointing", {"grad_checkpointing": True}),
    ("from scratch, lr 1e-3", {"pretrained": None, "head_init": "random", "lr": 1e-3}),
]
"""The fine-tuning tools side by side; full fine-tuning is the commit's own run and the seeds
sweep's, and WiSE-FT comes from its evaluation (evaluate.wise_alphas)."""
FINETUNE_KEYS = sorted({key for _, keys in FINETUNE for key in keys})


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


def queue_finetune(seeds: list[int], jobs: int) -> None:
    """Queue every fine-tuning arm but full fine-tuning (the commit's own run and the seeds
    sweep's) at each seed, the same keys for the three models, then start (`jobs` 0: queue
    only)."""
    for label, keys in FINETUNE[1:]:
        for seed in seeds:
            sets = [arg for method in METHODS
                    for key, setting in {**keys, "seed": seed}.items()
                    for arg in ("-S", f"train_{method}.{key}={json.dumps(setting)}")]
            slug = "-".join(label.replace(",", "").replace("+ ", "").split()[:3])
            _dvc("exp", "run", "--queue", "--name", f"ft-{slug}-s{seed}", *sets)
    if jobs:
        _dvc("queue", "start", "-j", str(jobs))


def main() -> None:
    cli = argparse.ArgumentParser(description="Queue seed sweeps and the token-choice "
                                              "ablation as DVC experiments; collect them.")
    commands = cli.add_subparsers(dest="command", required=True)
    for name, text in (("seeds", "queue every model at other seeds"),
                       ("ablation", "queue A-CLIP vs FLIP vs all tokens at keep 0.5 / 0.75"),
                       ("finetune", "queue the fine-tuning tools side by side")):
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
    collect.add_argument("kind", choices=("seeds", "ablation", "finetune"))
    collect.add_argument("--out", type=Path, default=Path("docs/results"))
    collect.add_argument("--rev", nargs="+", dest="revs",
                         help="the commits the experiments were run on, their params.yaml "
                              "alike (default: the current one)")
    args = cli.parse_args()
    from harclip import results

    if args.command == "show":
        sys.stdout.write(results.show_table(results.finished_runs(args.revs)))
    elif args.command == "seeds":
        queue_seeds(args.seeds, args.jobs)
    elif args.command == "ablation":
        queue_ablation(args.seeds, args.jobs, tuple(args.keep_ratios))
    elif args.command == "finetune":
        queue_finetune(args.seeds, args.jobs)
    else:
        sys.stdout.write(results.report(args.kind, args.out, args.revs))


if __name__ == "__main__":
    main()
