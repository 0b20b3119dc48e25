"""The classifier: a backbone whose normalised image embedding feeds a linear class head,
initialised from the text tower's class-prompt embeddings (the zero-shot start), and the
class-level image–text term that keeps training in the backbone's own loss family."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harclip.config.schema import TrainConfig
from harclip.data.layout import CLASS_NAMES
from harclip.model.backbones import create_backbone, create_tokenizer, is_siglip, open_clip
from harclip.model.tuning import apply_tuning
from harclip.runtime.errors import StageError
from harclip.runtime.log import log


def class_prompt_name(label: str, phrases: Mapping[str, str] | None = None) -> str:
    """How a class reads inside a prompt: its phrase if one is given, else the label with
    underscores as spaces (`listening_to_music` → `listening to music`)."""
    return (phrases or {}).get(label, label.replace("_", " "))


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


def build_classifier(name: str, pretrained: str | None, num_classes: int,
                     image_size: int | None = None,
                     normalisation: dict | None = None) -> HarClassifier:
    """A backbone by name with an (uninitialised) class head of the right width."""
    clip = create_backbone(name, pretrained, image_size, normalisation)
    return HarClassifier(clip, num_classes, open_clip.get_model_config(name)["embed_dim"])


def build_model(config: TrainConfig, class_names: Sequence[str] = CLASS_NAMES, tokenizer=None,
                section: str = "train") -> tuple[HarClassifier, PromptEncoder | None]:
    """The classifier with its class head, and the class-prompt encoder when the run uses text
    (a `text` head or an image–text term; `tokenizer` defaults to the model's own). `section`
    names the params section `config` came from, for messages."""
    phrases = dict(config.prompt_names)
    unknown = sorted(set(phrases) - set(class_names))
    if unknown and len(unknown) < len(phrases):  # some are classes: the others are typos
        shown = ", ".join(map(repr, unknown[:5])) + (", ..." if len(unknown) > 5 else "")
        raise StageError(f"{section}.prompt_names: {shown} not among the {len(class_names)} "
                         f"classes of the data; remove those entries (where train or "
                         f"{section} sets them), or set prompt_names: {{}} to let the prompts "
                         f"read the class names")
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
    apply_tuning(model, config.tune, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                 trains_text=bool(config.contrastive_weight),
                 grad_checkpointing=config.grad_checkpointing)
    return model, prompts
