"""The typed sections of params.yaml: every key, its type and the range it may take.

There are no defaults here: every key is required, so params.yaml (or a file in configs/) is
the one place a value comes from, and `dvc params diff` sees every change. Scalars are
Strict* types: "64" is not an int and 1 is not a bool.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic.dataclasses import dataclass

METHODS = ("clip", "sglip", "aclip")
"""The three training stages, train_<method>, in the study's order."""
LABELS = {"clip": "CLIP", "sglip": "SigLIP", "aclip": "A-CLIP"}
"""How each method is named in tables and figures."""

# Sections stay lax so a nested mapping validates into its dataclass.
STRICT = ConfigDict(extra="forbid", frozen=True)

Fraction = Annotated[StrictFloat, Field(gt=0.0, lt=1.0)]


def names_a_file(pretrained: str) -> bool:
    """Whether a `pretrained:` value names a local weights file rather than an open_clip tag:
    a file that exists, or a name with a suffix or a folder in it (tags have neither:
    `openai`, `webli`, `laion2b_s34b_b79k`)."""
    return Path(pretrained).is_file() or bool(Path(pretrained).suffix) or "/" in pretrained


def _templates(templates: tuple[str, ...]) -> tuple[str, ...]:
    if not templates or any("{}" not in template for template in templates):
        raise ValueError("list at least one template, each containing '{}' (where the class's "
                         "phrase goes)")
    return templates


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


@dataclass(config=STRICT)
class SyntheticConfig:
    """The embedded, procedurally drawn HAR-shaped dataset (offline)."""

    images_per_class: Annotated[StrictInt, Field(ge=2, le=100_000)]
    shifted_images_per_class: Annotated[StrictInt, Field(ge=0, le=100_000)]
    """The shifted test split: the same actions in a palette the others never use (the
    miniature's distribution shift); 0: none."""
    image_size: Annotated[StrictInt, Field(ge=32, le=1024)]
    seed: StrictInt


@dataclass(config=STRICT)
class DownloadConfig:
    """Where data/raw comes from. `path` is a local source; without it the network is used."""

    source: Literal["synthetic", "huggingface", "kaggle", "folder"]
    path: StrictStr | None
    classes: tuple[StrictStr, ...] | None
    """Pins the class names and their order; a label outside them is reported as bad. null:
    the classes the source has (HAR's 15 in the hub's order for HAR's sources)."""
    hf_repo: StrictStr
    hf_split: StrictStr
    """The labelled split to read (HAR's hub test split has placeholder labels)."""
    hf_image_column: StrictStr | None
    """null: the column the dataset's features call Image, else `image`."""
    hf_label_column: StrictStr | None
    """null: the column the dataset's features call ClassLabel, else `labels`."""
    kaggle_dataset: StrictStr
    synthetic: SyntheticConfig

    def __post_init__(self) -> None:
        if self.source == "folder" and not self.path:
            raise ValueError("source 'folder' needs download.path: a directory in the Kaggle "
                             "layout or with one sub-folder per class")
        if self.classes is not None and (len(set(self.classes)) != len(self.classes)
                                         or len(self.classes) < 2 or not all(self.classes)):
            raise ValueError("classes: at least two distinct, non-empty class names")


@dataclass(config=STRICT)
class PreprocessConfig:
    """Decoding, resizing and the train/val split written to data/cache."""

    image_size: Annotated[StrictInt, Field(ge=16, le=1024)]
    fit: Literal["crop", "squash"]
    """crop: shorter side to image_size, then the centre square (CLIP's view); squash: the
    whole image resized to a square, aspect ratio not kept."""
    val_fraction: Fraction
    test_fraction: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)]
    """Held-out test share; no training step or model selection reads it. 0: val only."""
    seed: StrictInt
    max_bad_fraction: Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
    max_image_pixels: Annotated[StrictInt, Field(ge=1)]
    """Images with more pixels are reported as bad, not decoded (decompression bombs); the
    shipped value is PIL's own limit."""
    workers: Annotated[StrictInt, Field(ge=0, le=256)]
    """Decoding processes; 0 means one per CPU core."""
    min_images_per_class: Annotated[StrictInt, Field(ge=1)] | None
    """A class with fewer images is left out, its rows reported as bad (`rare_class`): most
    likely a mistyped label. null: the fewest that put one image in each split."""

    @property
    def fewest_images_per_class(self) -> int:
        """min_images_per_class, or the fewest images the stratified split gives one image in
        each split (its shares are rounded per class)."""
        if self.min_images_per_class is not None:
            return self.min_images_per_class
        return next(n for n in range(1, 10_000)
                    if round(self.val_fraction * n) >= 1
                    and (self.test_fraction == 0 or round(self.test_fraction * n) >= 1)
                    and n - round(self.val_fraction * n) - round(self.test_fraction * n) >= 1)

    def __post_init__(self) -> None:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"val_fraction {self.val_fraction} + test_fraction "
                             f"{self.test_fraction} leave nothing to train on")


@dataclass(config=STRICT)
class AugmentConfig:
    """The per-sample augmentation done on the training device."""

    scale_min: Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
    """Smallest crop area, as a share of the image (random resized crop)."""
    flip: StrictBool


@dataclass(config=STRICT)
class TrainConfig:
    """One model's fine-tuning run: the shared section `train` with its model's section
    (train_clip, train_sglip or train_aclip) merged over it."""

    model: StrictStr
    """An open_clip model name, or a shipped tiny one (harclip-tiny-clip, harclip-tiny-siglip)."""
    pretrained: StrictStr | None
    """An open_clip pretrained tag (openai, webli, ...), a local checkpoint file, or null."""
    image_size: Annotated[StrictInt, Field(ge=16, le=1024)] | None
    """Model input size; null keeps the architecture's own."""
    head_init: Literal["text", "random"]
    prompt_templates: Annotated[tuple[StrictStr, ...], AfterValidator(_templates)]
    """How a class reads as text: each template's `{}` takes the class's phrase."""
    prompt_names: dict[StrictStr, StrictStr]
    """A phrase per class for the templates' `{}` (e.g. using_laptop: using a laptop); other
    classes read as their name with underscores as spaces."""
    contrastive_weight: Annotated[StrictFloat, Field(ge=0.0)]
    """λ of the image–text contrastive term (the model's own pre-training loss); 0 = CE only."""
    epochs: Annotated[StrictInt, Field(ge=1, le=10_000)]
    batch_size: Annotated[StrictInt, Field(ge=1)]
    """Effective batch, over all processes: processes × micro_batch_size × accumulation."""
    micro_batch_size: Annotated[StrictInt, Field(ge=1)] | None
    """Images per forward pass in each process; null = its whole share (no accumulation)."""
    lr: Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
    weight_decay: Annotated[StrictFloat, Field(ge=0.0)]
    betas: tuple[Annotated[StrictFloat, Field(ge=0.0, lt=1.0)],
                 Annotated[StrictFloat, Field(ge=0.0, lt=1.0)]]
    warmup_epochs: Annotated[StrictFloat, Field(ge=0.0)]
    grad_clip: Annotated[StrictFloat, Field(ge=0.0)]
    """Max gradient norm; 0 turns clipping off."""
    precision: Literal["auto", "bf16", "fp16", "fp32"]
    """auto: bf16 on a GPU that has it, fp16 with a grad scaler on one that has not, fp32 on
    CPU (where autocast rarely pays)."""
    device: StrictStr
    nprocs: Annotated[StrictInt, Field(ge=1, le=1024)]
    """Training processes on this machine (one per GPU, or gloo processes on CPU); above 1
    the stage relaunches itself under torchrun."""
    compile: StrictBool
    seed: StrictInt
    shots_per_class: Annotated[StrictInt, Field(ge=1)] | None
    """Train on k images of each class (stratified, drawn with `seed`; a class with fewer
    gives all of its own); null: the whole training split. Val and test are untouched."""
    augment: AugmentConfig
    log_every: Annotated[StrictInt, Field(ge=1)]
    """Progress-bar refresh, in steps: the only host–device syncs inside an epoch."""
    resume_every: Annotated[StrictInt, Field(ge=1)]
    """Save the resume state every this many epochs (weights, optimiser, teacher: on a GPU,
    seconds per save); an interrupted run repeats the epochs since the last one."""
    tune: Literal["full", "linear", "lora"]
    """What trains: the whole image tower (full), the head alone (linear), or low-rank
    adapters on the image tower's attention and MLP projections with the head (lora)."""
    lora_rank: Annotated[StrictInt, Field(ge=1)]
    lora_alpha: Annotated[StrictFloat, Field(gt=0.0)]
    layer_decay: Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
    """Block i's lr is lr × layer_decay^(depth − i), the embeddings deepest, the head at lr;
    1.0: off."""
    ema_decay: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)]
    """An EMA of the weights, scored beside them every epoch; 0: off."""
    label_smoothing: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)]
    grad_checkpointing: StrictBool
    """Recompute activations in the backward pass: less memory, more time."""
    cache_in_memory: Literal["auto"] | StrictBool
    """Where the training and validation images are kept: true loads them (onto the GPU when
    they fit, else into RAM), false streams them from the memory-mapped cache, auto streams a
    split larger than half the host's available memory."""

    def __post_init__(self) -> None:
        if self.batch_size % self.nprocs:
            raise ValueError(f"batch_size {self.batch_size} does not split evenly over "
                             f"nprocs {self.nprocs} processes")
        share = self.batch_size // self.nprocs
        if self.micro_batch_size and share % self.micro_batch_size:
            raise ValueError(f"each process takes batch_size / nprocs = {share} images a "
                             f"step, not a multiple of micro_batch_size "
                             f"{self.micro_batch_size}")
        if self.nprocs > 1 and self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(f"device {self.device!r} with nprocs {self.nprocs}: each process "
                             f"takes the GPU of its local rank; use auto, cuda or cpu")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} exceeds epochs {self.epochs}")
        _check_device(self.device)


@dataclass(config=STRICT)
class AclipConfig:
    """A-CLIP's attentive token masking."""

    keep_ratio: Annotated[StrictFloat, Field(gt=0.0, le=1.0)]
    """Share of patch blocks (or patches) the student sees, counted as the official code
    does: int(units × ratio) + 1, so 0.5 keeps 25 of ViT-B/16's 49 blocks; [CLS] is always
    kept."""
    selection: Literal["block", "patch"]
    """block: whole 2×2-patch blocks, as the official code; patch: single patches."""
    momentum: Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
    """EMA teacher momentum at the start; it rises to 1 on a cosine schedule."""
    saliency: Literal["teacher", "cached", "random"]
    """How the kept tokens are chosen. teacher: the EMA teacher scores the whole image every
    step; cached: per-image maps refreshed every refresh_epochs (no per-step teacher pass);
    both are warped to each crop. random: the same number, uniformly at random (FLIP)."""
    refresh_epochs: Annotated[StrictInt, Field(ge=1)]


@dataclass(config=STRICT)
class AclipTrainConfig(TrainConfig):
    """train_aclip: a training run plus A-CLIP's masking; λ is contrastive_weight."""

    aclip: AclipConfig


CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "snow", "jpeg", "contrast", "brightness",
               "pixelate")
"""The common corruptions evaluate can apply (ImageNet-C's families: noise, blur, weather,
digital); harclip.evaluate.corruptions holds how."""


@dataclass(config=STRICT)
class CorruptionsConfig:
    """The held-out split under common corruptions, scored beside the clean split."""

    names: tuple[Literal[CORRUPTIONS], ...]
    """Which corruptions; empty: none."""
    severities: tuple[Annotated[StrictInt, Field(ge=1, le=5)], ...]
    """ImageNet-C's severities, 1 (mild) to 5 (severe)."""
    seed: StrictInt
    """Seeds the corruptions' randomness, the same for every model."""

    def __post_init__(self) -> None:
        for key, values in (("names", self.names), ("severities", self.severities)):
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: each at most once")
        if self.names and not self.severities:
            raise ValueError("severities: list at least one (1 to 5) for the corruptions named")


@dataclass(config=STRICT)
class EvaluateConfig:
    """Scoring each best checkpoint on the validation and test splits."""

    batch_size: Annotated[StrictInt, Field(ge=1)]
    device: StrictStr
    zero_shot: StrictBool
    """Also score the untouched pretrained backbone with the class-prompt head (epoch 0)."""
    wise_alphas: tuple[Annotated[StrictFloat, Field(ge=0.0, le=1.0)], ...]
    """WiSE-FT: score (1 − α)·zero-shot + α·fine-tuned weights at each α (a pretrained start
    only); the α best on val goes to eval.json. Empty: off."""
    corruptions: CorruptionsConfig

    def __post_init__(self) -> None:
        _check_device(self.device)


@dataclass(config=STRICT)
class PlotConfig:
    """The figures in plots/."""

    dpi: Annotated[StrictInt, Field(ge=50, le=600)]


@dataclass(config=STRICT)
class Params:
    """All of params.yaml, each training section merged over the shared `train`. Sections a
    stage does not read are still validated."""

    download: DownloadConfig
    preprocess: PreprocessConfig
    train_clip: TrainConfig
    train_sglip: TrainConfig
    train_aclip: AclipTrainConfig
    evaluate: EvaluateConfig
    plot: PlotConfig

    def train(self, method: str) -> TrainConfig:
        """The training params of `method` (one of METHODS): train_<method> merged over the
        shared train section."""
        return getattr(self, f"train_{method}")


