"""Time per epoch and peak memory of each fine-tuning tool, one arm after another on a quiet
machine (the experiment sweep runs two at once, so its times compare only roughly).

    python benchmarks/finetune_bench.py                     # CLIP, every arm, 3 epochs each
    python benchmarks/finetune_bench.py --model sglip --epochs 2

Each arm is the training stage's own command (`python -m harclip.train`) on the demo cache
(`data/cache`: run `dvc repro preprocess` first), in a temporary folder with params.yaml's
section and the arm's keys; it reads the run's run.json: the steady-state time per epoch (the
first epoch left out), the peak memory above the cache, the trainable parameters. A process
per arm, so one arm's peak is not another's. Accuracy needs seeds and all epochs: see
`python -m harclip.experiments finetune`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "full fine-tuning": {},
    "+ layer decay 0.75": {"layer_decay": 0.75},
    "+ EMA of the weights 0.99": {"ema_decay": 0.99},
    "linear probe": {"tune": "linear"},
    "LoRA, rank 4": {"tune": "lora"},
    "gradient checkpointing": {"grad_checkpointing": True},
}


def measure(model: str, keys: dict, epochs: int, folder: Path) -> dict:
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    section = params[f"train_{model}"]
    if section.get("pretrained"):
        section["pretrained"] = str(ROOT / section["pretrained"])
    section.update(epochs=epochs, **keys)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "harclip.train", model, "--cache",
                    str(ROOT / "data" / "cache")], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((folder / "logs" / model / "run.json").read_text())


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--model", choices=("clip", "sglip", "aclip"), default="clip")
    cli.add_argument("--epochs", type=int, default=3, help="per arm; the first is left out")
    args = cli.parse_args()
    print(f"| {args.model}: arm | time per epoch (s) | peak memory above the cache (MB) | "
          f"trainable parameters |\n| :-- | --: | --: | --: |")
    for label, keys in ARMS.items():
        with tempfile.TemporaryDirectory(prefix="harclip-ft-") as folder:
            run = measure(args.model, keys, args.epochs, Path(folder))
        print(f"| {label} | {run['mean_epoch_time_s']:.1f} | {run['peak_memory_mb']:.0f} | "
              f"{run['trainable_parameters']:,} |", flush=True)


if __name__ == "__main__":
    main()
