"""preprocess stage: decode data/raw once into memory-mappable uint8 tensors in data/cache,
split into train/val/test, and report bad files.

    python -m harclip.preprocess [--raw data/raw] [--out data/cache]

The command line only; the work is `harclip.preprocess.stage`.
"""

from __future__ import annotations

from pathlib import Path

from harclip.config.params import load_params
from harclip.data.cache import CACHE_DIR
from harclip.data.layout import RAW_DIR
from harclip.preprocess.stage import preprocess
from harclip.runtime import harness


def main() -> None:
    cli = harness.parser("Decode data/raw once into memory-mappable uint8 tensors, split into "
                         "train/val/test, and report bad files (data/cache).")
    cli.add_argument("--raw", type=Path, default=RAW_DIR, help="input folder (%(default)s)")
    cli.add_argument("--out", type=Path, default=CACHE_DIR, help="output folder (%(default)s)")
    args = cli.parse_args()
    harness.run(lambda: preprocess(load_params(args.params).preprocess, args.raw, args.out))


if __name__ == "__main__":
    main()
