"""Models: open_clip CLIP/SigLIP backbones with a class-prompt classification head.

The HAR recipe uses open_clip's own architectures (`ViT-B-32-quickgelu`, `ViT-B-16-SigLIP`,
`ViT-B-16-quickgelu`). The offline demo uses tiny configs of the same families shipped in
`model_configs/` and registered with open_clip on import: `harclip-tiny-clip` (an open_clip
ViT) and `harclip-tiny-siglip` (a timm ViT tower with attention pooling, like SigLIP's).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from harclip.config import TrainConfig
from harclip.har import CLASS_NAMES
from harclip.stage import StageError, log
from harclip.tuning import apply_tuning


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
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
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


def class_prompt_name(label: str, phrases: Mapping[str, str] | None = None) -> str:
    """How a class reads inside a prompt: its phrase if one is given, else the label with
    underscores as spaces (`listening_to_music` → `listening to music`)."""
    return (phrases or {}).get(label, label.replace("_", " "))


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
    if pretrained and not Path(pretrained).is_file():
        if Path(pretrained).suffix or "/" in pretrained:
            raise StageError(f"{pretrained}: pretrained checkpoint file not found")
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise StageError(f"{name}: unknown pretrained tag {pretrained!r} (known: "
                             f"{', '.join(tags) or 'none'}; or give a local checkpoint file)")
    if normalisation is None and pretrained and Path(pretrained).is_file():
        normalisation = tag_normalisation(name)
    if open_clip.get_model_config(name)["text_cfg"].get("hf_model_name"):
        importlib.reload(open_clip.hf_model)  # a Hugging Face text tower needs transformers
    try:
        with tempfile.TemporaryDirectory() as scratch:
            if image_size and pretrained and Path(pretrained).is_file():
                pretrained = _in_float32(pretrained, Path(scratch))
            return open_clip.create_model(name, pretrained=pretrained or None,
                                          force_image_size=image_size,
                                          force_preprocess_cfg=normalisation or None)
    except Exception as err:  # the hub client raises many network error types
        if not pretrained or Path(pretrained).is_file():
            raise
        raise StageError(
            f"could not fetch pretrained weights {pretrained!r} for {name} "
            f"({type(err).__name__}: {err}). Without network access, download the weights "
            f"elsewhere and set pretrained to the local file path, or set pretrained: null "
            f"to train from random initialisation") from err


def _in_float32(path: str, scratch: Path) -> str:
    """`path` itself, or a float32 copy of its weights in `scratch` when it stores fp16 (the
    shipped checkpoints do): open_clip resizes the position embeddings to a forced image size
    with a bicubic resampling that has no fp16 kernel on the CPU."""
    state = open_clip.factory.load_state_dict(path)
    if not any(value.dtype == torch.float16 for value in state.values()):
        return path
    copy = scratch / Path(path).name
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


class PromptEncoder(nn.Module):
    """Class-prompt text embeddings (templates averaged, normalised) from the live text tower.

    Each template's `{}` takes the class's phrase (`phrases`, e.g. {"using_laptop": "using a
    laptop"}) or its name with underscores as spaces. Where the tower allows it the prompts
    are encoded cut to the longest one (`encode_text_cut`): a dozen tokens, not the whole
    context, every time the image–text term runs.
    """

    def __init__(self, tokenizer, class_names: Sequence[str], templates: Sequence[str],
                 phrases: Mapping[str, str] | None = None):
        super().__init__()
        texts = [template.format(class_prompt_name(name, phrases))
                 for name in class_names for template in templates]
        tokens = tokenizer(texts)
        self.register_buffer("tokens", tokens, persistent=False)
        self.length = int((tokens != 0).sum(dim=1).max())  # here, on the host: no GPU sync
        self.num_classes, self.num_templates = len(class_names), len(templates)

    def forward(self, clip: nn.Module) -> torch.Tensor:
        embeddings = encode_text_cut(clip, self.tokens, self.length)
        embeddings = embeddings.reshape(self.num_classes, self.num_templates, -1).mean(dim=1)
        return F.normalize(embeddings, dim=-1)


def encode_text_cut(clip: nn.Module, tokens: torch.Tensor, length: int) -> torch.Tensor:
    """`clip.encode_text(tokens, normalize=True)`, computed on the tokens cut to `length`, the
    longest text's (its last token and all before; padding is id 0).

    Exact for a causal text tower pooled at the end-of-text token (CLIP's, and the tiny
    SigLIP's here): no token attends to a later one and the pooled token is kept, so the
    padding changes nothing. Any other tower (SigLIP's webli one: no causal mask, pooled at
    the last position) gets its whole context.
    """
    tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps a TextTransformer apart
    pool = getattr(tower, "pool_type", getattr(tower, "text_pool_type", None))
    mask = getattr(tower, "attn_mask", None)
    if pool != "argmax" or mask is None or getattr(tower, "cls_emb", None) is not None \
            or getattr(tower, "use_pad_mask", False):
        return clip.encode_text(tokens, normalize=True)
    tokens = tokens[:, :length]
    cast = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast) + tower.positional_embedding[:length].to(cast)
    x = tower.ln_final(tower.transformer(x, attn_mask=mask[:length, :length]))
    x = x[torch.arange(len(tokens), device=x.device), tokens.argmax(dim=-1)]
    projection = tower.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return F.normalize(x, dim=-1)


class ClassHead(nn.Linear):
    """The linear class head, computed in fp32 even under autocast: at a logit scale near 100,
    bf16's spacing (0.125 between 16 and 32) would turn near-ties into coin flips."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(features.device.type, enabled=False):
            return super().forward(features.float())


class HarClassifier(nn.Module):
    """An open_clip model whose normalised image embedding feeds a linear class head."""

    def __init__(self, clip: nn.Module, num_classes: int, embed_dim: int):
        super().__init__()
        self.clip = clip
        self.head = ClassHead(embed_dim, num_classes)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_features(images))

    def group_matcher(self, coarse: bool = False) -> dict:
        """The image tower's layers in order, for timm's layer-wise lr decay: the patch and
        position embeddings, then each block (open_clip's ViT or a timm trunk); everything
        else (the final norm and projection, the head, the text tower) last, at the full lr."""
        return {"stem": r"^clip\.visual\.(?:conv1|class_embedding|positional_embedding|ln_pre|"
                        r"trunk\.(?:patch_embed|cls_token|reg_token|pos_embed|norm_pre))",
                "blocks": r"^clip\.visual\.(?:transformer\.resblocks|trunk\.blocks)\.(\d+)"}


def class_text_loss(features: torch.Tensor, class_text: torch.Tensor, labels: torch.Tensor,
                    clip: nn.Module) -> torch.Tensor:
    """The image–text term at class level: each image against the C class-prompt embeddings,
    its own class the only positive, in fp32 at the model's own logit scale (and bias).

    CLIP's family: softmax cross-entropy over the classes. SigLIP's: a sigmoid per
    (image, class) pair with one-hot targets, summed over classes and averaged over images,
    as open_clip's SigLipLoss normalises. Per-image texts would repeat each class prompt many
    times in a batch and make an image's own class a negative of itself.
    """
    with torch.autocast(features.device.type, enabled=False):
        logits = clip.logit_scale.exp().float() * features.float() @ class_text.float().T
        if not is_siglip(clip):
            return F.cross_entropy(logits, labels)
        logits = logits + clip.logit_bias.float()
        signs = 2 * F.one_hot(labels, logits.shape[1]).float() - 1
        return -F.logsigmoid(signs * logits).sum() / len(labels)


def init_head(model: HarClassifier, how: str,
              text_features: torch.Tensor | None = None) -> None:
    """Set the head so logits are the model's own image–text logits.

    `text`: rows are the normalised class-prompt embeddings (`text_features`) times the logit
    scale (plus SigLIP's logit bias), so a pretrained model starts at its zero-shot accuracy.
    `random`: random unit rows at the same scale (image features are unit-norm, so a head of
    nn.Linear's default norm would give near-uniform logits).
    """
    clip, head = model.clip, model.head
    rows = text_features if how == "text" else \
        F.normalize(torch.randn(head.out_features, head.in_features), dim=-1)
    with torch.no_grad():
        head.weight.copy_(rows * clip.logit_scale.exp())
        head.bias.fill_(float(clip.logit_bias) if is_siglip(clip) else 0.0)


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


def build_classifier(name: str, pretrained: str | None, num_classes: int,
                     image_size: int | None = None,
                     normalisation: dict | None = None) -> HarClassifier:
    """A backbone by name with an (uninitialised) class head of the right width."""
    clip = create_backbone(name, pretrained, image_size, normalisation)
    return HarClassifier(clip, num_classes, open_clip.get_model_config(name)["embed_dim"])


def build_model(config: TrainConfig, class_names: Sequence[str] = CLASS_NAMES, tokenizer=None
                ) -> tuple[HarClassifier, PromptEncoder | None]:
    """The classifier with its class head, and the class-prompt encoder when the run uses text
    (a `text` head or an image–text term; `tokenizer` defaults to the model's own)."""
    phrases = dict(config.prompt_names)
    unknown = sorted(set(phrases) - set(class_names))
    if unknown and len(unknown) < len(phrases):  # some are classes: the others are typos
        raise StageError(f"prompt_names: {', '.join(map(repr, unknown))} not among the "
                         f"{len(class_names)} classes of the data")
    if unknown:  # phrases for another data set's classes (the demo's, for HAR's 15)
        log.info("prompt_names describe none of the %d classes of the data; the prompts read "
                 "the class names", len(class_names))
        phrases = {}
    model = build_classifier(config.model, config.pretrained, len(class_names),
                             config.image_size)
    prompts = None
    if config.head_init == "text" or config.contrastive_weight:
        prompts = PromptEncoder(tokenizer or create_tokenizer(config.model), class_names,
                                config.prompt_templates, phrases)
    with torch.no_grad():
        init_head(model, config.head_init,
                  prompts(model.clip) if config.head_init == "text" else None)
    apply_tuning(model, config)  # what trains: the text tower only with an image–text term
    return model, prompts
