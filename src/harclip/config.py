"""Typed, validated configuration read from params.yaml.

Every stage loads and validates the *whole* file before doing any work, so a bad key
anywhere fails the first stage `dvc repro` runs, with an error naming the key, the value
and what is accepted. Each stage then uses only its own section (and declares only that
section in dvc.yaml), so editing a key reruns only the stages that read it.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic.dataclasses import dataclass

DEFAULT_PARAMS = Path("params.yaml")
HAR_REPO = "Bingsu/Human_Action_Recognition"
METHODS = ("clip", "sglip", "aclip")
"""The three training stages, train_<method>, in the study's order."""
LABELS = {"clip": "CLIP", "sglip": "SigLIP", "aclip": "A-CLIP"}
"""How each method is named in tables and figures."""

# Scalars are Strict* types: "64" is not an int and 1 is not a bool. Sections stay lax so a
# nested mapping validates into its dataclass.
STRICT = ConfigDict(extra="forbid", frozen=True)

Fraction = Annotated[StrictFloat, Field(gt=0.0, lt=1.0)]


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or holds a value the pipeline cannot use."""


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")


@dataclass(config=STRICT)
class SyntheticConfig:
    """The embedded, procedurally drawn HAR-shaped dataset (offline)."""

    images_per_class: Annotated[StrictInt, Field(ge=2, le=100_000)] = 200
    image_size: Annotated[StrictInt, Field(ge=32, le=1024)] = 128
    seed: StrictInt = 0


@dataclass(config=STRICT)
class DownloadConfig:
    """Where data/raw comes from. `path` is a local source; without it the network is used."""

    source: Literal["synthetic", "huggingface", "kaggle", "folder"] = "synthetic"
    path: StrictStr | None = None
    classes: tuple[StrictStr, ...] | None = None
    """Pins the class names and their order; a label outside them is reported as bad. null:
    the classes the source has (HAR's 15 in the hub's order for HAR's sources)."""
    hf_repo: StrictStr = HAR_REPO
    hf_split: StrictStr = "train"
    """The labelled split to read (HAR's hub test split has placeholder labels)."""
    hf_image_column: StrictStr | None = None
    """null: the column the dataset's features call Image, else `image`."""
    hf_label_column: StrictStr | None = None
    """null: the column the dataset's features call ClassLabel, else `labels`."""
    kaggle_dataset: StrictStr = "meetnagadia/human-action-recognition-har-dataset"
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

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

    image_size: Annotated[StrictInt, Field(ge=16, le=1024)] = 64
    fit: Literal["crop", "squash"] = "crop"
    """crop: shorter side to image_size, then the centre square (CLIP's view); squash: the
    whole image resized to a square, aspect ratio not kept."""
    val_fraction: Fraction = 0.2
    test_fraction: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)] = 0.1
    """Held-out test share; no training step or model selection reads it. 0: val only."""
    seed: StrictInt = 0
    max_bad_fraction: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.05
    max_image_pixels: Annotated[StrictInt, Field(ge=1)] = 89_478_485
    """Images with more pixels are reported as bad, not decoded (decompression bombs); the
    default is PIL's own limit."""
    workers: Annotated[StrictInt, Field(ge=0, le=256)] = 0
    """Decoding processes; 0 means one per CPU core."""
    min_images_per_class: Annotated[StrictInt, Field(ge=1)] | None = None
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

    scale_min: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] = 0.35
    """Smallest crop area, as a share of the image (random resized crop)."""
    flip: StrictBool = True


@dataclass(config=STRICT)
class TrainConfig:
    """One model's fine-tuning run (sections train_clip, train_sglip, train_aclip)."""

    model: StrictStr = "harclip-tiny-clip"
    """An open_clip model name, or a shipped tiny one (harclip-tiny-clip, harclip-tiny-siglip)."""
    pretrained: StrictStr | None = None
    """An open_clip pretrained tag (openai, webli, ...), a local checkpoint file, or null."""
    image_size: Annotated[StrictInt, Field(ge=16, le=1024)] | None = None
    """Model input size; null keeps the architecture's own."""
    head_init: Literal["text", "random"] = "text"
    prompt_templates: tuple[StrictStr, ...] = ("a photo of a person {}.",)
    prompt_names: dict[StrictStr, StrictStr] = Field(default_factory=dict)
    """A phrase per class for the templates' `{}` (e.g. using_laptop: using a laptop); other
    classes read as their name with underscores as spaces."""
    contrastive_weight: Annotated[StrictFloat, Field(ge=0.0)] = 0.0
    """λ of the image–text contrastive term (the model's own pre-training loss); 0 = CE only."""
    epochs: Annotated[StrictInt, Field(ge=1, le=10_000)] = 10
    batch_size: Annotated[StrictInt, Field(ge=1)] = 64
    """Effective batch, over all processes: processes × micro_batch_size × accumulation."""
    micro_batch_size: Annotated[StrictInt, Field(ge=1)] | None = None
    """Images per forward pass in each process; null = its whole share (no accumulation)."""
    lr: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] = 1e-3
    weight_decay: Annotated[StrictFloat, Field(ge=0.0)] = 0.05
    betas: tuple[Annotated[StrictFloat, Field(ge=0.0, lt=1.0)],
                 Annotated[StrictFloat, Field(ge=0.0, lt=1.0)]] = (0.9, 0.999)
    warmup_epochs: Annotated[StrictFloat, Field(ge=0.0)] = 1.0
    grad_clip: Annotated[StrictFloat, Field(ge=0.0)] = 1.0
    """Max gradient norm; 0 turns clipping off."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 on a GPU that has it, fp16 with a grad scaler on one that has not, fp32 on
    CPU (where autocast rarely pays)."""
    device: StrictStr = "auto"
    nprocs: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    """Training processes on this machine (one per GPU, or gloo processes on CPU); above 1
    the stage relaunches itself under torchrun."""
    compile: StrictBool = False
    seed: StrictInt = 0
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    log_every: Annotated[StrictInt, Field(ge=1)] = 25
    """Progress-bar refresh, in steps: the only host–device syncs inside an epoch."""
    resume_every: Annotated[StrictInt, Field(ge=1)] = 1
    """Save the resume state every this many epochs (weights, optimiser, teacher: on a GPU,
    seconds per save); an interrupted run repeats the epochs since the last one."""
    tune: Literal["full", "linear", "lora"] = "full"
    """What trains: the whole image tower (full), the head alone (linear), or low-rank
    adapters on the image tower's attention and MLP projections with the head (lora)."""
    lora_rank: Annotated[StrictInt, Field(ge=1)] = 4
    lora_alpha: Annotated[StrictFloat, Field(gt=0.0)] = 8.0
    layer_decay: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] = 1.0
    """Block i's lr is lr × layer_decay^(depth − i), the embeddings deepest, the head at lr;
    1.0: off."""
    ema_decay: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)] = 0.0
    """An EMA of the weights, scored beside them every epoch; 0: off."""
    label_smoothing: Annotated[StrictFloat, Field(ge=0.0, lt=1.0)] = 0.0
    grad_checkpointing: StrictBool = False
    """Recompute activations in the backward pass: less memory, more time."""

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
        if not self.prompt_templates or any("{}" not in t for t in self.prompt_templates):
            raise ValueError("prompt_templates: each template needs a '{}' where the action goes")
        _check_device(self.device)


@dataclass(config=STRICT)
class AclipConfig:
    """A-CLIP's attentive token masking."""

    keep_ratio: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] = 0.5
    """Share of patch blocks (or patches) the student sees, counted as the official code
    does: int(units × ratio) + 1, so 0.5 keeps 25 of ViT-B/16's 49 blocks; [CLS] is always
    kept."""
    selection: Literal["block", "patch"] = "block"
    """block: whole 2×2-patch blocks, as the official code; patch: single patches."""
    momentum: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.996
    """EMA teacher momentum at the start; it rises to 1 on a cosine schedule."""
    saliency: Literal["teacher", "cached", "random"] = "teacher"
    """How the kept tokens are chosen. teacher: the EMA teacher scores the whole image every
    step; cached: per-image maps refreshed every refresh_epochs (no per-step teacher pass);
    both are warped to each crop. random: the same number, uniformly at random (FLIP)."""
    refresh_epochs: Annotated[StrictInt, Field(ge=1)] = 1


@dataclass(config=STRICT)
class AclipTrainConfig(TrainConfig):
    """train_aclip: a training run plus A-CLIP's masking; λ is contrastive_weight."""

    contrastive_weight: Annotated[StrictFloat, Field(ge=0.0)] = 1.0
    aclip: AclipConfig = Field(default_factory=AclipConfig)


@dataclass(config=STRICT)
class EvaluateConfig:
    """Scoring each best checkpoint on the validation split."""

    batch_size: Annotated[StrictInt, Field(ge=1)] = 256
    device: StrictStr = "auto"
    zero_shot: StrictBool = True
    """Also score the untouched pretrained backbone with the class-prompt head (epoch 0)."""
    wise_alphas: tuple[Annotated[StrictFloat, Field(ge=0.0, le=1.0)], ...] = ()
    """WiSE-FT: score (1 − α)·zero-shot + α·fine-tuned weights at each α (a pretrained start
    only); the α best on val goes to eval.json. Empty: off."""

    def __post_init__(self) -> None:
        _check_device(self.device)


@dataclass(config=STRICT)
class PlotConfig:
    """The figures in plots/."""

    dpi: Annotated[StrictInt, Field(ge=50, le=600)] = 120


@dataclass(config=STRICT)
class Params:
    """All of params.yaml. Sections a stage does not read are still validated."""

    download: DownloadConfig = Field(default_factory=DownloadConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    train_clip: TrainConfig = Field(default_factory=TrainConfig)
    train_sglip: TrainConfig = Field(
        default_factory=lambda: TrainConfig(model="harclip-tiny-siglip"))
    train_aclip: AclipTrainConfig = Field(default_factory=AclipTrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    plot: PlotConfig = Field(default_factory=PlotConfig)

    def train(self, method: str) -> TrainConfig:
        """The training section of `method` (one of METHODS): train_<method>."""
        return getattr(self, f"train_{method}")


SectionT = TypeVar("SectionT")


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float, as YAML 1.2 (and DVC's own parser) does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$"),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error naming the file when it is missing or malformed."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the params file ({err.strerror})") from err
    try:
        data = yaml.load(text, Loader=_Yaml12Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, "
                          f"got {type(data).__name__}")
    return data


def describe_errors(err: ValidationError, path: Path) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            lines.append(f"{path}: unknown key '{key}' (= {item['input']!r}); "
                         f"see README.md for the keys each section accepts")
        elif item["type"] == "missing":
            lines.append(f"{path}: missing key '{key}'")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {key} = {item['input']!r}: {msg}")
    return "invalid params:\n  " + "\n  ".join(lines)


def parse_params(data: dict[str, Any], path: Path = DEFAULT_PARAMS) -> Params:
    """Validate a params mapping into typed sections, or raise ConfigError naming each bad key."""
    try:
        return TypeAdapter(Params).validate_python(data)
    except ValidationError as err:
        raise ConfigError(describe_errors(err, path)) from None


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate a whole params file; every section must be there (an empty file
    would otherwise run on code defaults that differ from the shipped params)."""
    path = Path(path)
    data = read_yaml(path)
    missing = [name for name in section_names() if name not in data]
    if missing:
        raise ConfigError(f"{path}: {'empty' if not data else 'incomplete'}: missing "
                          f"section(s) {', '.join(missing)}; start from the shipped "
                          f"params.yaml or a file in configs/")
    return parse_params(data, path)


def section_names() -> list[str]:
    """The top-level sections params.yaml holds, in pipeline order."""
    return [f.name for f in fields(Params)]


def main() -> None:
    """`python -m harclip.config`: the check_params stage, which DVC runs on every `dvc repro`
    so that a mistyped section is caught even when no other stage has to run."""
    import argparse
    import sys

    cli = argparse.ArgumentParser(description="Validate a whole params file: every section, "
                                              "key, type and range.")
    cli.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                     help="params file to check (default: %(default)s)")
    args = cli.parse_args()
    try:
        load_params(args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.params}: valid")


if __name__ == "__main__":
    main()
