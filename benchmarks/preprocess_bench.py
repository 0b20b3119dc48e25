"""Benchmark the preprocess stage on real HAR JPEGs: images per second by size and workers,
and its peak memory as the set grows.

    python benchmarks/preprocess_bench.py [--sample ../shared/data/har-sample] [--json out.json]
    python benchmarks/preprocess_bench.py --memory 3.5 35   # 12,600 and 126,000 images

Runs the stage's own `preprocess()` (decode, EXIF, RGB, resize, hash, split, write the cache)
on a copy-free view of the sample and prints a table; numbers belong in docs/benchmarks.md.
`--memory` runs the stage's command on the sample repeated that many times (each copy made
unique by trailing bytes JPEG decoders ignore, so no two files are duplicates) and reports
its peak resident memory, read every 50 ms: the stage process's own (its VmHWM), and its
process tree's (the decoding workers included).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from measure import peak_memory

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
    cli.add_argument("--memory", type=float, nargs="+", metavar="TIMES",
                     help="measure peak memory at these multiples of the sample instead, at "
                          "the largest of --sizes")
    cli.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()),
                     help="where --memory builds its data sets (needs the caches' space)")
    args = cli.parse_args()
    if not (args.sample / "Training_set.csv").is_file():
        sys.exit(f"{args.sample}: no HAR sample here (Training_set.csv + train/); pass --sample")
    if args.memory:
        memory(args.sample, args.memory, max(args.sizes), args.work, args.json)
        return
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
            images = sum(summary[f"{split}_images"] for split in ("train", "val", "test"))
            results.append({"image_size": size, "workers": workers, "images": images,
                            "seconds": round(best, 3), "images_per_second": round(images / best)})
            print(f"{size:>5} {workers:>7} {images:>7} {best:>8.2f} {images / best:>8.0f}")
    if args.json:
        args.json.write_text(json.dumps({"hardware": describe(), "results": results}, indent=2))


def repeated_sample(sample: Path, images: int, raw: Path) -> None:
    """`images` files of the sample, cycled, in the Kaggle layout; copy k of a file ends in k
    extra bytes after the JPEG's end marker, so every file hashes differently."""
    with open(sample / "Training_set.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    (raw / "train").mkdir(parents=True)
    with open(raw / "Training_set.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("filename", "label"))
        for index in range(images):
            row = rows[index % len(rows)]
            copy, name = index // len(rows), f"{index:07d}.jpg"
            data = (sample / "train" / row["filename"]).read_bytes()
            (raw / "train" / name).write_bytes(data + b"\0" * copy)
            writer.writerow((name, row["label"]))


def memory(sample: Path, multiples: list[float], size: int, work: Path,
           json_path: Path | None) -> None:
    import yaml

    print(f"preprocess's peak memory at {size} px — {describe()}")
    print(f"{'images':>8} {'seconds':>8} {'stage MB':>9} {'tree MB':>8} {'cache MB':>9}",
          flush=True)
    results = []
    sample_size = len((sample / "Training_set.csv").read_text().splitlines()) - 1
    for multiple in multiples:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            root = Path(tmp)
            images = round(multiple * sample_size)
            repeated_sample(sample, images, root / "raw")
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            params["preprocess"]["image_size"] = size
            (root / "params.yaml").write_text(yaml.safe_dump(params))
            seconds, largest, tree = peak_memory(
                [sys.executable, "-m", "harclip.preprocess", "--params", str(root / "params.yaml"),
                 "--raw", str(root / "raw"), "--out", str(root / "cache")])
            cache = sum(f.stat().st_size for f in (root / "cache").iterdir()) / 2**20
        results.append({"images": images, "image_size": size, "seconds": round(seconds, 1),
                        "stage_peak_mb": round(largest), "tree_peak_mb": round(tree),
                        "cache_mb": round(cache)})
        print(f"{images:>8,} {seconds:>8.1f} {largest:>9.0f} {tree:>8.0f} {cache:>9,.0f}",
              flush=True)
    if json_path:
        json_path.write_text(json.dumps({"hardware": describe(), "memory": results}, indent=2))


if __name__ == "__main__":
    main()
