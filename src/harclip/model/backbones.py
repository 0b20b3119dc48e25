"""Backbones: open_clip's CLIP and SigLIP models by name, with or without pretrained weights,
their tokenizers and the preprocessing their weights expect.

The HAR recipe uses open_clip's own architectures (`ViT-B-32-quickgelu`, `ViT-B-16-SigLIP`,
`ViT-B-16-quickgelu`). The offline demo uses tiny configs of the same families shipped in
`configs/` beside this file and registered with open_clip on import: `harclip-tiny-clip` (an
open_clip ViT) and `harclip-tiny-siglip` (a timm ViT tower without a class token, like
SigLIP's).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import torch
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from harclip.config.schema import names_a_file
from harclip.model.storage import CHECKPOINT_FORMAT, load_data
from harclip.runtime.errors import StageError, first_line


def _import_open_clip():
    """open_clip without transformers, which it imports (about 1 s) for CoCa and Hugging Face
    text towers that harclip does not build; its Hugging Face tokenizers (SigLIP's) import
    transformers themselves when one is used."""
    if "transformers" in sys.modules:
        import open_clip
        return open_clip
    sys.modules["transformers"] = None  # importing it raises ImportError meanwhile
    try:
        import open_clip
    finally:
        del sys.modules["transformers"]
    return open_clip


open_clip = _import_open_clip()
MODEL_CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)


@register_model
def harclip_vit_tiny_patch8_64_siglip(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """A 4-layer, 128-wide timm ViT at 64 px without a class token, like SigLIP's towers.

    It pools by averaging tokens rather than SigLIP's attention-pooling (MAP) head: trained
    from scratch on a few thousand images, the MAP head learned far slower in our runs.
    """
    if pretrained:
        raise ValueError("harclip_vit_tiny_patch8_64_siglip has no pretrained weights")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    architecture = {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4,
                    "num_heads": 4, "class_token": False, "global_pool": "avg"}
    return VisionTransformer(**{**architecture, **kwargs})


def is_siglip(clip: nn.Module) -> bool:
    """SigLIP models carry a learned logit bias; softmax-CLIP models do not."""
    return getattr(clip, "logit_bias", None) is not None


def tag_normalisation(name: str) -> dict:
    """The mean and std every pretrained tag of `name` shares (open_clip records them per
    tag), or {} when the tags disagree or there are none: open_clip gives a local weights
    file its default (OpenAI's) normalisation, which is wrong for SigLIP's weights."""
    default = open_clip.transform.PreprocessCfg()
    found = {(tuple(cfg.get("mean", default.mean)), tuple(cfg.get("std", default.std)))
             for cfg in (open_clip.get_pretrained_cfg(name, tag)
                         for tag in open_clip.list_pretrained_tags_by_model(name))}
    if len(found) != 1:
        return {}
    (mean, std), = found
    return {"mean": mean, "std": std}


def create_backbone(name: str, pretrained: str | None, image_size: int | None = None,
                    normalisation: dict | None = None) -> nn.Module:
    """An open_clip model by name; `pretrained` is a tag (e.g. `openai`), a local file, or None.

    A tag brings its own mean and std; a local file takes the ones its architecture's tags
    share; `normalisation` ({"mean", "std"}) overrides both (a saved checkpoint's).
    Failing to fetch a tag's weights (no network) is an error that says how to go on offline.
    """
    if name not in open_clip.list_models():
        raise StageError(f"unknown model {name!r}: expected an open_clip model name (e.g. "
                         f"ViT-B-32-quickgelu) or one shipped here: harclip-tiny-clip, "
                         f"harclip-tiny-siglip")
    local = bool(pretrained) and names_a_file(pretrained)
    if local and not Path(pretrained).is_file():
        raise StageError(f"{pretrained}: pretrained checkpoint file not found")
    if pretrained and not local:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise StageError(f"{name}: unknown pretrained tag {pretrained!r} (known: "
                             f"{', '.join(tags) or 'none'}; or give a local checkpoint file)")
    if normalisation is None and local:
        normalisation = tag_normalisation(name)
    if open_clip.get_model_config(name)["text_cfg"].get("hf_model_name"):
        importlib.reload(open_clip.hf_model)  # a Hugging Face text tower needs transformers
    try:
        with tempfile.TemporaryDirectory() as scratch:
            weights = _checked_start(Path(pretrained), Path(scratch), bool(image_size)) \
                if local else pretrained
            return open_clip.create_model(name, pretrained=weights or None,
                                          force_image_size=image_size,
                                          force_preprocess_cfg=normalisation or None)
    except (StageError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as err:  # the hub client raises many network error types
        if local:
            first = first_line(err)[:200]
            read = Path(pretrained).suffix not in OPEN_CLIP_READS  # read above: it is data
            what = f"its weights do not fit {name}" if read else \
                f"open_clip cannot read it as {name}'s weights"
            raise StageError(f"{pretrained}: {what} ({type(err).__name__}: {first}); give "
                             f"{name}'s own weights, or the model they were saved from") \
                from None
        if not pretrained:
            raise
        raise StageError(
            f"could not fetch pretrained weights {pretrained!r} for {name} "
            f"({type(err).__name__}: {err}). Without network access, download the weights "
            f"elsewhere and set pretrained to the local file path, or set pretrained: null "
            f"to train from random initialisation") from err


OPEN_CLIP_READS = (".safetensors", ".npz", ".npy")
"""Weights formats that hold data only, which open_clip reads itself (unchecked here)."""


def _checked_start(path: Path, scratch: Path, resized: bool) -> str:
    """A local start read as data only before open_clip reads it: a pickle that carries code,
    a truncated or foreign file, or a fine-tuned harclip classifier is one line, and no
    payload runs. Returns `path` itself, or, where the weights are resized to another image
    size and stored in fp16 (the shipped starts are), a float32 copy in `scratch`: the bicubic
    resampling of the position embeddings has no fp16 kernel on the CPU. safetensors and
    big_vision's numpy files hold data only; open_clip reads them itself."""
    if path.suffix in OPEN_CLIP_READS:
        return str(path)
    payload = load_data(path, "weights file")
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        raise StageError(f"{path}: a fine-tuned harclip checkpoint, not a pretrained start: "
                         f"use `python -m harclip.predict --model {path}` with it, or give "
                         f"its backbone's weights")
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or \
            not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise StageError(f"{path}: not a weights file (expected a state dict of tensors, "
                         f"as open_clip saves them)")
    if not resized or not any(value.dtype == torch.float16 for value in state.values()):
        return str(path)
    copy = scratch / path.name
    torch.save({key: value.float() if value.dtype == torch.float16 else value
                for key, value in state.items()}, copy)
    return str(copy)


def create_tokenizer(name: str):
    """The model's tokenizer; SigLIP's comes from the Hugging Face hub and needs a download.

    The tiny models shipped here use open_clip's built-in BPE tokenizer, which works offline
    (open_clip would otherwise pick SigLIP's hub tokenizer for any name containing "siglip").
    """
    if (MODEL_CONFIG_DIR / f"{name}.json").is_file():
        context_length = open_clip.get_model_config(name)["text_cfg"]["context_length"]
        return open_clip.SimpleTokenizer(context_length=context_length)
    try:
        return open_clip.get_tokenizer(name)
    except Exception as err:  # HF tokenizers raise network and file errors of many types
        raise StageError(
            f"could not load the tokenizer of {name} ({type(err).__name__}: {err}); it comes "
            f"from the Hugging Face hub. Run once with network access to cache it, or use a "
            f"model with open_clip's built-in tokenizer (e.g. harclip-tiny-siglip)") from err


def image_normalisation(clip: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the backbone was trained with (CLIP's and SigLIP's differ)."""
    cfg = clip.visual.preprocess_cfg
    return tuple(cfg["mean"]), tuple(cfg["std"])


def model_image_size(clip: nn.Module) -> int:
    size = clip.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def preprocessing_of(clip: nn.Module) -> dict:
    """The input size, mean and std a backbone's images need, as a checkpoint records them."""
    mean, std = image_normalisation(clip)
    return {"image_size": model_image_size(clip), "mean": list(mean), "std": list(std)}
