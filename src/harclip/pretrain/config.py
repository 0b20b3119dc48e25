"""The pretraining's own settings (models/pretrained/pretrain.yaml): the captioned world and the
contrastive schedule, every key required as in params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, StrictFloat, StrictInt, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from harclip.config.params import describe_errors, read_yaml
from harclip.config.schema import STRICT, AugmentConfig
from harclip.runtime.errors import ConfigError


@dataclass(config=STRICT)
class WorldConfig:
    """The captioned synthetic world the tiny models are pretrained on
    (`harclip.pretrain.world`)."""

    images: Annotated[StrictInt, Field(ge=64)]
    held_out: Annotated[StrictInt, Field(ge=10)]
    """Further scenes, never trained on, for the image→caption retrieval figures."""
    draw_size: Annotated[StrictInt, Field(ge=32, le=1024)]
    image_size: Annotated[StrictInt, Field(ge=16, le=1024)]
    """Drawn at draw_size, JPEG-encoded and decoded to image_size, as the demo's images are."""
    phrasings: Annotated[StrictInt, Field(ge=1, le=16)]
    """Captions per image; each step reads one of them at random."""
    seed: StrictInt


@dataclass(config=STRICT)
class PretrainConfig:
    """models/pretrained/pretrain.yaml: the world and the contrastive schedule (both models)."""

    world: WorldConfig
    epochs: Annotated[StrictInt, Field(ge=1, le=10_000)]
    batch_size: Annotated[StrictInt, Field(ge=2)]
    lr: Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
    weight_decay: Annotated[StrictFloat, Field(ge=0.0)]
    warmup_epochs: Annotated[StrictFloat, Field(ge=0.0)]
    augment: AugmentConfig
    seed: StrictInt
    zero_shot_images_per_class: Annotated[StrictInt, Field(ge=1)]
    """HAR stand-in images per class (drawn with zero_shot_seed) for the card's zero-shot."""
    zero_shot_seed: StrictInt


def load_pretrain_config(path: Path | str) -> PretrainConfig:
    """models/pretrained/pretrain.yaml, validated (an unknown key or a bad value names
    itself)."""
    try:
        return TypeAdapter(PretrainConfig).validate_python(read_yaml(Path(path)))
    except ValidationError as err:
        raise ConfigError(describe_errors(err, Path(path))) from None
