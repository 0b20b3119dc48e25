"""evaluate stage: score one model's chosen checkpoint on the validation and test splits.

    python -m harclip.evaluate clip

The command line only (answers `--help` without importing torch); the work, and what it
writes into metrics/<method>/, is `harclip.evaluate.stage`.
"""

from __future__ import annotations

from pathlib import Path

from harclip.config.params import load_params
from harclip.config.schema import METHODS
from harclip.data.cache import CACHE_DIR
from harclip.runtime import harness


def main() -> None:
    cli = harness.parser("Evaluate models/<method>.pt on the val and test splits; write "
                         "metrics/<method>/eval.json, report.json and predictions.csv.")
    cli.add_argument("method", choices=METHODS, help="which model to evaluate")
    cli.add_argument("--cache", type=Path, default=CACHE_DIR, help="input (%(default)s)")
    args = cli.parse_args()

    def run() -> None:
        config = load_params(args.params).evaluate
        from harclip.evaluate.stage import evaluate  # torch: after the arguments and params

        evaluate(args.method, config, args.cache)

    harness.run(run)


if __name__ == "__main__":
    main()
