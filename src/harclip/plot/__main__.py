"""plot stage: the figures and tables people look at after `dvc repro`.

    python -m harclip.plot
    python -m harclip.plot --update-readme README.md   # copy plots/summary.md into README

The command line only (no matplotlib: `--help` answers at once); the work is
`harclip.plot.stage`.
"""

from __future__ import annotations

from pathlib import Path

from harclip.config.params import load_params
from harclip.runtime import harness


def main() -> None:
    cli = harness.parser("Draw per-model curves and confusion matrices, the cross-model "
                         "comparison and the study's tables into plots/.")
    cli.add_argument("--update-readme", type=Path, metavar="README",
                     help="only copy plots/summary.md into README's results block and stop")
    args = cli.parse_args()

    def run() -> None:
        if args.update_readme:
            from harclip.plot.tables import splice_results

            splice_results(args.update_readme, Path("plots/summary.md"))
        else:
            config = load_params(args.params).plot
            from harclip.plot.stage import plot  # matplotlib: after the arguments and params

            plot(config)

    harness.run(run)


if __name__ == "__main__":
    main()
