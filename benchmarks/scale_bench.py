"""How the pipeline's cost grows with the data set: wall time and peak memory of download,
preprocess, one training epoch and evaluate at 1×, 4× and 16× the demo's images.

    python benchmarks/scale_bench.py [--scales 1 4 16] [--json out.json]

Each scale runs the stages' own commands in a fresh folder, on the synthetic source with the
demo's params.yaml (`download.synthetic.images_per_class` and `shifted_images_per_class` × the
scale; `train_clip` for one epoch). Peak memory is read every 50 ms: the stage process's own
(VmHWM) and its process tree's. The growth exponent is the slope of log(cost) against
log(images): 1 is linear, 0 flat. Numbers belong in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from measure import ROOT, peak_memory

from harclip.runtime.devices import describe

STAGES = {"download": ["-m", "harclip.download"],
          "preprocess": ["-m", "harclip.preprocess"],
          "train": ["-m", "harclip.train", "clip"],  # train_clip, one epoch
          "evaluate": ["-m", "harclip.evaluate", "clip"]}


def project(folder: Path, scale: int) -> int:
    """A project folder for `scale`: the demo's params at scale × its images; the shipped
    pretrained starts. Returns its image count."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    synthetic = params["download"]["synthetic"]
    synthetic["images_per_class"] *= scale
    synthetic["shifted_images_per_class"] *= scale  # the shift split grows with the rest
    params["train_clip"] = {**(params.get("train_clip") or {}), "epochs": 1}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (folder / "models").mkdir()
    (folder / "models" / "pretrained").symlink_to(ROOT / "models" / "pretrained")
    return (synthetic["images_per_class"] + synthetic["shifted_images_per_class"]) * 15


def exponent(images: list[int], costs: list[float]) -> float:
    return float(np.polyfit(np.log(images), np.log(costs), 1)[0])


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    cli.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()),
                     help="where the project folders are made (16×: about 1 GB)")
    cli.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES),
                     metavar="STAGE", help=f"the stages to measure (default: all: "
                                           f"{', '.join(STAGES)}); earlier ones they need "
                                           f"run untimed")
    cli.add_argument("--json", type=Path, help="also write the results here")
    args = cli.parse_args()
    print(f"scale benchmark — {describe()}", flush=True)
    results: dict[str, list[dict]] = {stage: [] for stage in args.stages}
    counts = []
    for scale in args.scales:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp:
            folder = Path(tmp)
            counts.append(project(folder, scale))
            last = max(list(STAGES).index(stage) for stage in args.stages)
            for stage in list(STAGES)[:last + 1]:
                command = [sys.executable, *STAGES[stage]]
                if stage not in args.stages:  # an earlier stage the asked ones need, untimed
                    peak_memory(command, cwd=folder)
                    continue
                seconds, own, tree = peak_memory(command, cwd=folder)
                results[stage].append({"scale": scale, "images": counts[-1],
                                       "seconds": round(seconds, 1), "stage_peak_mb": round(own),
                                       "tree_peak_mb": round(tree)})
                print(f"{scale:>3}× {counts[-1]:>7,} images  {stage:<20} {seconds:>7.1f} s "
                      f"{own:>7.0f} MB own {tree:>7.0f} MB tree", flush=True)
    print(f"\n{'stage':<20} {'time exponent':>14} {'memory exponent':>16}")
    for stage, rows in results.items() if len(counts) > 1 else ():
        time_exp = exponent(counts, [r["seconds"] for r in rows])
        memory_exp = exponent(counts, [r["tree_peak_mb"] for r in rows])
        print(f"{stage:<20} {time_exp:>14.2f} {memory_exp:>16.2f}")
        for row in rows:
            row.update(time_exponent=round(time_exp, 2), memory_exponent=round(memory_exp, 2))
    if args.json:
        args.json.write_text(json.dumps({"hardware": describe(), "stages": results}, indent=2))


if __name__ == "__main__":
    main()
