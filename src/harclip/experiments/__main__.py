"""Sweeps through DVC's own experiment queue, and the tables and figures that collect them.

    python -m harclip.experiments show                       # every run at a glance
    python -m harclip.experiments seeds --seeds 1 2          # every model at other seeds
    python -m harclip.experiments ablation --seeds 0 1 2     # A-CLIP vs FLIP vs full tokens
    python -m harclip.experiments shots --shots 1 2 4 8 16 --seeds 0 1 2   # few labels
    dvc queue status                                         # follow them
    python -m harclip.experiments report seeds --out docs/results
    python -m harclip.experiments report ablation --out docs/results
    python -m harclip.experiments report shift --rev <commit>   # test against the shift

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
import sys
from pathlib import Path

from harclip.experiments import report, shift, shots
from harclip.experiments.show import show_table, with_inference
from harclip.experiments.sweeps import queue_ablation, queue_finetune, queue_seeds, queue_shots
from harclip.runtime.harness import PARAMS_FILE, run
from harclip.runtime.log import log


def main() -> None:
    cli = argparse.ArgumentParser(description="Queue seed sweeps and the token-choice "
                                              "ablation as DVC experiments; collect them.")
    commands = cli.add_subparsers(dest="command", required=True)
    for name, text in (("seeds", "queue every model at other seeds"),
                       ("ablation", "queue A-CLIP vs FLIP vs all tokens at keep 0.5 / 0.75"),
                       ("finetune", "queue the fine-tuning tools side by side"),
                       ("shots", "queue few-shot runs: k images a class, full / linear / "
                                 "LoRA")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--seeds", type=int, nargs="+", required=True)
        command.add_argument("--jobs", type=int, default=1,
                             help="experiments run at once (dvc queue start -j); 0: queue "
                                  "only, to start the queue once after queueing both sweeps")
    commands.choices["shots"].add_argument(
        "--shots", type=int, nargs="+", required=True, metavar="K",
        help="training images per class (train.shots_per_class), e.g. 1 2 4 8 16")
    commands.choices["ablation"].add_argument(
        "--keep-ratios", type=float, nargs="+", default=[0.75, 0.5],
        help="keep ratios of the masked runs (all tokens, 1.0, always)")
    show = commands.add_parser("show", help="the experiments at a glance: the params that "
                               "differ and every model's headline numbers")
    show.add_argument("--rev", nargs="+", dest="revs",
                      help="commits whose experiments to show (default: the current one)")
    collect = commands.add_parser("report", help="table and figure of finished experiments")
    collect.add_argument("kind", choices=("seeds", "ablation", "finetune", "shots", "shift"))
    collect.add_argument("--out", type=Path, default=Path("docs/results"))
    collect.add_argument("--rev", nargs="+", dest="revs",
                         help="the commits the experiments were run on, their params.yaml "
                              "alike (default: the current one)")
    args = cli.parse_args()
    if args.command == "show":
        sys.stdout.write(show_table(with_inference(report.finished_runs(args.revs))))
    elif args.command == "seeds":
        queue_seeds(PARAMS_FILE, args.seeds, args.jobs)
    elif args.command == "ablation":
        queue_ablation(PARAMS_FILE, args.seeds, args.jobs, tuple(args.keep_ratios))
    elif args.command == "finetune":
        queue_finetune(PARAMS_FILE, args.seeds, args.jobs)
    elif args.command == "shots":
        queue_shots(PARAMS_FILE, args.shots, args.seeds, args.jobs)
    else:
        rows = report.finished_runs(args.revs)
        if args.kind == "shots":
            table, written = shots.report_shots(args.out, rows, shots.zero_shot_of(rows))
        elif args.kind == "shift":
            table, written = shift.report_shift(args.out, rows)
        else:
            table, written = report.report(args.kind, args.out, rows)
        sys.stdout.write(table)
        log.info("wrote %s", ", ".join(map(str, written)))


if __name__ == "__main__":
    run(main)
