"""Pretrain the demo's tiny CLIP or SigLIP on the captioned synthetic world.

    python -m harclip.pretrain clip       # harclip-tiny-clip, open_clip's ClipLoss
    python -m harclip.pretrain siglip     # harclip-tiny-siglip, SigLipLoss
    make pretrained                       # both

Writes models/pretrained/<model>.pt (fp16 weights that `open_clip.create_model(name,
pretrained=<file>)` loads, as downloaded weights) and <model>.json (its card: data,
schedule, time, hardware, held-out image→caption retrieval, zero-shot on a HAR stand-in
sample with the prompts params.yaml gives CLIP and SigLIP). Spent once, by whoever rebuilds
the shipped checkpoints: no `dvc repro` runs it. The command line only; the work is
`harclip.pretrain.stage`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harclip.config.params import load_params
from harclip.pretrain.config import load_pretrain_config
from harclip.runtime import harness

METHOD = {"clip": "clip", "siglip": "sglip"}
"""Whose training params (prompts) each pretrained model's zero-shot figure uses."""


def main() -> None:
    cli = argparse.ArgumentParser(description="Pretrain harclip-tiny-clip or -siglip on the "
                                              "captioned synthetic world; write "
                                              "models/pretrained/<model>.pt and .json.")
    cli.add_argument("model", choices=tuple(METHOD), help="which tiny model to pretrain")
    cli.add_argument("--config", type=Path, default=Path("models/pretrained/pretrain.yaml"),
                     help="the world and the schedule (%(default)s)")
    cli.add_argument("--params", type=Path, default=harness.PARAMS_FILE,
                     help="whose CLIP / SigLIP prompts the zero-shot figure uses "
                          "(%(default)s)")
    cli.add_argument("--out", type=Path, default=Path("models/pretrained"),
                     help="output folder (%(default)s)")
    cli.add_argument("--device", default="auto")
    args = cli.parse_args()

    def run() -> None:
        config = load_pretrain_config(args.config)
        train = load_params(args.params).train(METHOD[args.model])
        from harclip.pretrain import stage  # torch: after the arguments and params
        from harclip.runtime.devices import resolve_device

        stage.run(args.model, config, train, args.out, resolve_device(args.device))

    harness.run(run)


if __name__ == "__main__":
    main()
