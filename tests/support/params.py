"""Params for tests: the shipped params.yaml as a dict (for DVC projects and stages started in
a temporary folder) or as typed sections with a test's own changes. Every key is required, so
a test starts from the shipped values and says what it changes."""

from __future__ import annotations

import functools
from dataclasses import replace

import open_clip
import yaml

from harclip.config.params import load_params
from harclip.config.schema import (
    AclipConfig,
    AugmentConfig,
    DownloadConfig,
    EvaluateConfig,
    Params,
    PreprocessConfig,
    SyntheticConfig,
    TrainConfig,
)
from tests.support import REPO_ROOT


def repo_params() -> dict:
    """params.yaml as a dict, its pretrained starts made absolute: a stage started in a
    temporary folder finds the shipped checkpoints."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section in params.values():
        if isinstance(section, dict) and section.get("pretrained"):
            section["pretrained"] = str(REPO_ROOT / section["pretrained"])
    return params


def tiny_params() -> dict:
    """The repo's default params, shrunk so a whole pipeline runs in seconds."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["download"]["synthetic"].update(images_per_class=6, shifted_images_per_class=2,
                                           image_size=32)
    params["preprocess"].update(image_size=24, workers=1)
    return params


def tiny_training_params() -> dict:
    """tiny_params with two short epochs of training for every model."""
    params = tiny_params()
    params["preprocess"]["image_size"] = 32
    params["train"].update(epochs=2, batch_size=16, log_every=1)
    return params


def offline_tokenizer(name: str):
    """open_clip's built-in BPE tokenizer folded into `name`'s text vocabulary: SigLIP's own
    tokenizer is a hub download."""
    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    simple = open_clip.SimpleTokenizer(context_length=text_cfg["context_length"])
    return lambda texts: simple(texts) % text_cfg["vocab_size"]


@functools.cache
def shipped() -> Params:
    """The shipped params.yaml, validated."""
    return load_params(REPO_ROOT / "params.yaml")


def train_config(method: str = "clip", **changes) -> TrainConfig:
    """The shipped training params of `method` with `changes`, from scratch (pretrained: null)
    unless the changes name a start: a unit test's model builds in a blink and reads no
    file."""
    return replace(shipped().train(method), **{"pretrained": None, **changes})


def aclip_config(**changes) -> AclipConfig:
    return replace(shipped().train_aclip.aclip, **changes)


def augment_config(**changes) -> AugmentConfig:
    return replace(shipped().train_clip.augment, **changes)


def download_config(**changes) -> DownloadConfig:
    return replace(shipped().download, **changes)


def synthetic_config(**changes) -> SyntheticConfig:
    return replace(shipped().download.synthetic, **changes)


def preprocess_config(**changes) -> PreprocessConfig:
    return replace(shipped().preprocess, **changes)


def evaluate_config(**changes) -> EvaluateConfig:
    return replace(shipped().evaluate, **changes)
