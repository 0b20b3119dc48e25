"""download stage: bring a labelled image set (HAR by default, or its synthetic stand-in) into
data/raw in the Kaggle layout: Training_set.csv + train/ + classes.json.

    python -m harclip.download [--out data/raw]

The command line only; the work is `harclip.download.stage`.
"""

from __future__ import annotations

from pathlib import Path

from harclip.config.params import load_params
from harclip.data.layout import RAW_DIR
from harclip.download.stage import download
from harclip.runtime import harness


def main() -> None:
    cli = harness.parser("Fetch HAR (or the synthetic stand-in, or any labelled image set) into "
                         "data/raw in the Kaggle layout: Training_set.csv + train/ + "
                         "classes.json.")
    cli.add_argument("--out", type=Path, default=RAW_DIR, help="output folder (%(default)s)")
    args = cli.parse_args()
    harness.run(lambda: download(load_params(args.params).download, args.out))


if __name__ == "__main__":
    main()
