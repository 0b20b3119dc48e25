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
from typing import Annotated

from pydantic import Field, StrictFloat, StrictInt, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from harclip import stage
from harclip.config import (
    STRICT,
    AugmentConfig,
    ConfigError,
    describe_errors,
    load_params,
    read_yaml,
)

SECTION = {"clip": "train_clip", "siglip": "train_sglip"}


@dataclass(config=STRICT)
class WorldConfig:
    """The captioned synthetic world the tiny models are pretrained on (harclip.world)."""

    images: Annotated[StrictInt, Field(ge=64)] = 40_000
    held_out: Annotated[StrictInt, Field(ge=10)] = 1_000
    """Further scenes, never trained on, for the image→caption retrieval figures."""
    draw_size: Annotated[StrictInt, Field(ge=32, le=1024)] = 96
    image_size: Annotated[StrictInt, Field(ge=16, le=1024)] = 64
    """Drawn at draw_size, JPEG-encoded and decoded to image_size, as the demo's images are."""
    phrasings: Annotated[StrictInt, Field(ge=1, le=16)] = 4
    """Captions per image; each step reads one of them at random."""
    seed: StrictInt = 0


@dataclass(config=STRICT)
class PretrainConfig:
    """configs/pretrain.yaml: the world and the contrastive schedule (both models)."""

    world: WorldConfig = Field(default_factory=WorldConfig)
    epochs: Annotated[StrictInt, Field(ge=1, le=10_000)] = 10
    batch_size: Annotated[StrictInt, Field(ge=2)] = 256
    lr: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] = 1e-3
    weight_decay: Annotated[StrictFloat, Field(ge=0.0)] = 0.1
    warmup_epochs: Annotated[StrictFloat, Field(ge=0.0)] = 1.0
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: StrictInt = 0
    zero_shot_images_per_class: Annotated[StrictInt, Field(ge=1)] = 50
    """HAR stand-in images per class (drawn with zero_shot_seed) for the card's zero-shot."""
    zero_shot_seed: StrictInt = 1_000


def load_pretrain_config(path: Path | str) -> PretrainConfig:
    """configs/pretrain.yaml, validated (an unknown key or a bad value names itself)."""
    try:
        return TypeAdapter(PretrainConfig).validate_python(read_yaml(Path(path)))
    except ValidationError as err:
        raise ConfigError(describe_errors(err, Path(path))) from None




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
