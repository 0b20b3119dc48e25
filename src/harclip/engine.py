"""One training engine for every method: each method supplies a model and an Objective.

The loop keeps the GPU busy: the uint8 cache sits on the device (or in pinned host memory
when it does not fit), augmentation runs on the device for the whole batch, loss and
accuracy accumulate in device tensors, and the host reads them only every `log_every` steps
and at the end of an epoch.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from timm.scheduler import CosineLRScheduler
from torch import nn

from harclip import stage
from harclip.augment import DeviceAugment
from harclip.config import TrainConfig
from harclip.stage import StageError

NO_WEIGHT_DECAY_NAMES = ("logit_scale", "logit_bias")


class TrainingDiverged(StageError):
    """The loss became NaN or infinite."""


@dataclass
class EpochRecord:
    """What one epoch measured: the original study's table and more."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    epoch_time_s: float
    images_per_s: float
    peak_memory_mb: float
    lr: float


@dataclass
class Batch:
    """One micro-batch on the device: augmented images, labels, their rows in the split and
    each crop's affine matrix (for methods that warp per-image data the same way)."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor | None = None
    crop: torch.Tensor | None = None


class Objective:
    """A method's loss: by default cross-entropy on the class head."""

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, class logits) for one micro-batch."""
        logits = model(batch.images)
        return F.cross_entropy(logits, batch.labels), logits

    def before_epoch(self, epoch: int, split: CachedSplit, augment: DeviceAugment) -> None:
        """Hook for per-epoch work (A-CLIP's cached saliency)."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook for state that follows the weights (A-CLIP's EMA teacher)."""


class ContrastiveObjective(Objective):
    """CE on the class head + λ × the model's own pre-training loss against class prompts.

    Each image's positive text is its class prompt embedding from the live text tower;
    open_clip's ClipLoss (softmax) serves CLIP, its SigLipLoss (sigmoid) serves SigLIP.
    Subclasses change how image features are computed (A-CLIP: from the kept tokens only).
    """

    def __init__(self, prompts: nn.Module, weight: float, siglip: bool) -> None:
        self.prompts, self.weight, self.siglip = prompts, weight, siglip
        self.contrastive = SigLipLoss() if siglip else ClipLoss()

    def image_features(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return model.image_features(batch.images)

    def loss(self, model, batch):
        features = self.image_features(model, batch)
        logits = model.head(features)
        loss = F.cross_entropy(logits, batch.labels)
        if self.weight:
            text = self.prompts(model.clip)[batch.labels]
            scale = model.clip.logit_scale.exp()
            bias = (model.clip.logit_bias,) if self.siglip else ()
            loss = loss + self.weight * self.contrastive(features, text, scale, *bias)
        return loss, logits


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StageError(f"device {name!r} asked for, but no CUDA GPU is visible; "
                         f"set device: auto or cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, embeddings of rank 1 and logit scale/bias."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or name.endswith(".bias") or \
                any(key in name for key in NO_WEIGHT_DECAY_NAMES):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                   steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warmup to `lr`, then cosine decay to zero at the last optimiser step."""
    total = config.epochs * steps_per_epoch
    warmup = min(total - 1, round(config.warmup_epochs * steps_per_epoch))
    return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=0.0,
                             warmup_t=warmup, warmup_lr_init=config.lr * 1e-3,
                             warmup_prefix=True, t_in_epochs=False)


class CachedSplit:
    """A split of the uint8 cache: on the GPU when it fits in `device_fraction` of the free
    memory, else in host memory with each batch pinned and copied asynchronously."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 device_fraction: float = 0.5) -> None:
        array = torch.from_numpy(np.array(images))  # reads a memory-mapped cache into RAM
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.device = device
        fits = device.type == "cuda" and \
            array.numel() < device_fraction * torch.cuda.mem_get_info(device)[0]
        self.images = array.to(device) if fits else array

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: torch.Tensor, size: int,
                with_index: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
        """(uint8 images, labels[, rows]) on the device, in `order` (a CPU index tensor)."""
        for start in range(0, len(order), size):
            index = order[start:start + size]
            on_device = index.to(self.device, non_blocking=True)
            if self.images.device == self.device:
                images = self.images[on_device]
            else:  # indexing copies the batch; pinning that copy makes the upload async
                images = self.images[index].pin_memory().to(self.device, non_blocking=True)
            yield (images, self.labels[on_device], on_device) if with_index else \
                (images, self.labels[on_device])


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory this epoch; on CPU, the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def predict(model: nn.Module, split: CachedSplit, augment: DeviceAugment, batch_size: int,
            dtype: torch.dtype | None) -> torch.Tensor:
    """Class logits (float32, on the device) for a whole split: deterministic view, all
    tokens."""
    model.eval()
    with autocast(split.device, dtype):
        return torch.cat([model(augment.eval(images)).float()
                          for images, _ in split.batches(torch.arange(len(split)), batch_size)])


def evaluate(model: nn.Module, split: CachedSplit, augment: DeviceAugment, batch_size: int,
             dtype: torch.dtype | None) -> tuple[float, float]:
    """(mean loss, accuracy) on the deterministic view, all tokens."""
    logits = predict(model, split, augment, batch_size, dtype)
    loss = F.cross_entropy(logits, split.labels)
    accuracy = (logits.argmax(dim=1) == split.labels).float().mean()
    return loss.item(), accuracy.item()


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulate_gradients(model: nn.Module, objective: Objective,
                         micro_batches: Iterable[Batch],
                         group_size: int, scaler: torch.amp.GradScaler,
                         dtype: torch.dtype | None, bar=None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backpropagate one effective batch given as micro-batches; gradients add up in .grad.

    Each micro-batch's mean loss weighs by its share of the group, so the summed gradient is
    the mean over the whole effective batch, as one big batch would give. Returns the summed
    loss, the number of correct predictions and whether every loss was finite, all as device
    tensors (no host sync).
    """
    loss_sum = correct = None
    finite = None
    for batch in micro_batches:
        labels = batch.labels
        with autocast(labels.device, dtype):
            loss, logits = objective.loss(model, batch)
        scaler.scale(loss * (len(labels) / group_size)).backward()
        batch_loss = loss.detach().float() * len(labels)
        batch_correct = (logits.detach().argmax(dim=1) == labels).sum()
        batch_finite = torch.isfinite(loss.detach())
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        finite = batch_finite if finite is None else finite & batch_finite
        if bar is not None:
            bar.update(len(labels))
    return loss_sum, correct, finite


def train(model: nn.Module, objective: Objective, train_split: CachedSplit,
          val_split: CachedSplit, augment: DeviceAugment, config: TrainConfig,
          on_epoch: Callable[[EpochRecord], None] = lambda record: None,
          describe: str = "train") -> list[EpochRecord]:
    """Fine-tune `model` for config.epochs; call `on_epoch` after each with its record."""
    device = train_split.device
    dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  betas=config.betas, fused=device.type == "cuda")
    micro = config.micro_batch_size or config.batch_size
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    scheduler = make_scheduler(optimizer, config, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(config.seed)
    crops = torch.Generator(device=device).manual_seed(config.seed)
    history: list[EpochRecord] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        objective.before_epoch(epoch, train_split, augment)  # its time counts in the epoch
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        first_bad_step = torch.full((), -1, device=device, dtype=torch.long)
        order = torch.randperm(len(train_split), generator=shuffle)
        bar = stage.progress(total=len(train_split), unit="img", leave=False,
                             desc=f"{describe} epoch {epoch}/{config.epochs}")
        for group_start in range(0, len(order), config.batch_size):
            group = order[group_start:group_start + config.batch_size]
            scheduler.step_update(step)
            micro_batches = (_augmented(augment, crops, *parts)
                             for parts in train_split.batches(group, micro, with_index=True))
            group_loss, group_correct, finite = accumulate_gradients(
                model, objective, micro_batches, len(group), scaler, dtype, bar)
            loss_sum += group_loss
            correct += group_correct
            first_bad_step = torch.where(~finite & (first_bad_step < 0), step, first_bad_step)
            if config.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            objective.after_optimizer_step(step, total_steps)
            if step % config.log_every == 0:
                seen = group_start + len(group)
                _check_finite(first_bad_step, epoch, steps_per_epoch)
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}",
                                acc=f"{correct.item() / seen:.3f}")
        bar.close()
        _check_finite(first_bad_step, epoch, steps_per_epoch)
        train_loss, train_acc = loss_sum.item() / len(order), correct.item() / len(order)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epoch_time = time.perf_counter() - started
        val_loss, val_acc = evaluate(model, val_split, augment, micro * 2, dtype)
        record = EpochRecord(epoch, train_loss, train_acc, val_loss, val_acc, epoch_time,
                             len(order) / epoch_time, peak_memory_mb(device),
                             optimizer.param_groups[0]["lr"])
        history.append(record)
        on_epoch(record)
    return history


def _augmented(augment: DeviceAugment, generator: torch.Generator, images: torch.Tensor,
               labels: torch.Tensor, index: torch.Tensor) -> Batch:
    views, crop = augment.train(images, generator)
    return Batch(views, labels, index, crop)


def _check_finite(first_bad_step: torch.Tensor, epoch: int, steps_per_epoch: int) -> None:
    bad = int(first_bad_step.item())
    if bad >= 0:
        raise TrainingDiverged(
            f"the loss became NaN or infinite at epoch {epoch}, step {bad + 1} "
            f"(step {bad - (epoch - 1) * steps_per_epoch + 1} of the epoch); lower lr, "
            f"raise warmup_epochs or use precision: fp32")


def record_row(record: EpochRecord) -> dict:
    return {key: round(value, 6) if isinstance(value, float) else value
            for key, value in asdict(record).items()}
