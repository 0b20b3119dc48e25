"""Benchmark the preprocess stage on real HAR JPEGs: images per second by size and workers.

    python benchmarks/preprocess_bench.py [--sample ../shared/data/har-sample] [--json out.json]

Runs the stage's own `preprocess()` (decode, EXIF, RGB, resize, hash, split, write the cache)
on a copy-free view of the sample and prints a table; numbers belong in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from harclip.config.params import load_params
from harclip.preprocess.stage import preprocess
from harclip.runtime.devices import describe

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = ROOT.parent / "shared" / "data" / "har-sample"


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE,
                     help="a HAR folder in the Kaggle layout (default: %(default)s)")
    cli.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    cli.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    cli.add_argument("--repeats", type=int, default=2, help="best of N runs")
    cli.add_argument("--json", type=Path, help="also write the results here")
    args = cli.parse_args()
    if not (args.sample / "Training_set.csv").is_file():
        sys.exit(f"{args.sample}: no HAR sample here (Training_set.csv + train/); pass --sample")
    logging.disable(logging.WARNING)
    shipped = load_params(ROOT / "params.yaml").preprocess
    results = []
    print(f"preprocess on {args.sample} — {describe()}")
    print(f"{'size':>5} {'workers':>7} {'images':>7} {'seconds':>8} {'img/s':>8}")
    for size in args.sizes:
        for workers in args.workers:
            best = float("inf")
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    config = replace(shipped, image_size=size, workers=workers)
                    summary = preprocess(config, args.sample, Path(tmp) / "cache")
                    best = min(best, time.perf_counter() - start)
            images = summary["train_images"] + summary["val_images"]
            results.append({"image_size": size, "workers": workers, "images": images,
                            "seconds": round(best, 3), "images_per_second": round(images / best)})
            print(f"{size:>5} {workers:>7} {images:>7} {best:>8.2f} {images / best:>8.0f}")
    if args.json:
        args.json.write_text(json.dumps({"hardware": describe(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
