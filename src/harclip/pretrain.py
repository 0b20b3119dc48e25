"""Pretrain the demo's tiny CLIP or SigLIP on the captioned synthetic world.

    python -m harclip.pretrain clip       # harclip-tiny-clip, open_clip's ClipLoss
    python -m harclip.pretrain siglip     # harclip-tiny-siglip, SigLipLoss
    make pretrained                       # both

Writes models/pretrained/<model>.pt (fp16 weights that `open_clip.create_model(name,
pretrained=<file>)` loads, as downloaded weights) and <model>.json (its card: data,
schedule, time, hardware, held-out image→caption retrieval, zero-shot on a HAR stand-in
sample with the prompts params.yaml's train_clip / train_sglip use). Spent once, by whoever
rebuilds the shipped checkpoints: no `dvc repro` runs it. The command line only; the work is
`harclip.pretraining`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harclip import stage
from harclip.config import load_params, load_pretrain_config

SECTION = {"clip": "train_clip", "siglip": "train_sglip"}


def main() -> None:
    cli = argparse.ArgumentParser(description="Pretrain harclip-tiny-clip or -siglip on the "
                                              "captioned synthetic world; write "
                                              "models/pretrained/<model>.pt and .json.")
    cli.add_argument("model", choices=tuple(SECTION), help="which tiny model to pretrain")
    cli.add_argument("--config", type=Path, default=Path("models/pretrained/pretrain.yaml"),
                     help="the world and the schedule (%(default)s)")
    cli.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="whose train_clip / train_sglip prompts the zero-shot figure uses "
                          "(%(default)s)")
    cli.add_argument("--out", type=Path, default=Path("models/pretrained"),
                     help="output folder (%(default)s)")
    cli.add_argument("--device", default="auto")
    args = cli.parse_args()

    def run() -> None:
        config = load_pretrain_config(args.config)
        train = getattr(load_params(args.params), SECTION[args.model])
        from harclip import pretraining
        from harclip.hardware import resolve_device

        pretraining.run(args.model, config, train, args.out, resolve_device(args.device))

    stage.run(run)


if __name__ == "__main__":
    main()
