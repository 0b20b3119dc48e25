"""One training engine for every method: each method supplies a model and an Objective.

The loop keeps the GPU busy: the uint8 cache sits on the device (or in pinned host memory
when it does not fit), augmentation runs on the device for the whole batch, loss and
accuracy accumulate in device tensors, and the host reads them only for a live progress bar
(every `log_every` steps) and at the end of an epoch. Under torchrun each process takes an
equal share of every effective batch (DistributedDataParallel averages the gradients), and a
run is resumable at any epoch boundary from `Trainer.state_dict()`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from harclip.config.schema import TrainConfig
from harclip.model.feed import (
    Batch,
    CachedSplit,
    effective_batches,
    resident_cache_bytes,
    steps_per_epoch,
)
from harclip.model.optim import make_scheduler, parameter_groups
from harclip.model.scoring import split_logits
from harclip.model.views import DeviceAugment
from harclip.runtime.devices import (
    autocast,
    autocast_dtype,
    peak_memory_mb,
    reset_peak_memory,
    synchronize,
)
from harclip.runtime.distributed import ALONE, World, data_parallel
from harclip.runtime.errors import StageError
from harclip.runtime.log import progress
from harclip.train.objectives import Objective


class TrainingDiverged(StageError):
    """The loss became NaN or infinite."""


@dataclass
class EpochRecord:
    """What one epoch measured: the original study's table and more.

    Both losses named `*_loss` are the class head's cross-entropy, so train and val compare
    like with like; the image–text term (unweighted) has its own column. `epoch_time_s` is
    the epoch's training time, A-CLIP's saliency refresh (`refresh_time_s`) included and
    validation (`val_time_s`) and the end-of-epoch saves (`save_time_s`, filled in by the
    caller that saves) excluded; `peak_memory_mb` is the peak above the resident image cache.
    `warm_up` marks the first epoch a process ran (the run's first, or a resumed run's):
    compilation and warm-up make it no measure of the steady state.
    """

    epoch: int
    train_loss: float
    train_image_text_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    epoch_time_s: float
    refresh_time_s: float
    images_per_s: float
    peak_memory_mb: float
    lr: float
    val_time_s: float = 0.0
    save_time_s: float = 0.0
    warm_up: bool = False
    ema_val_loss: float | None = None
    ema_val_acc: float | None = None
    """The EMA of the weights on val (`ema_decay` > 0), scored as the weights are."""


def validate(model: nn.Module, split: CachedSplit, augment: DeviceAugment, batch_size: int,
             dtype: torch.dtype | None, world: World = ALONE) -> tuple[float, float]:
    """(mean loss, accuracy) on the deterministic view, all tokens; each process scores every
    world.size-th image and the sums are reduced.

    It runs eager even where the image tower is compiled: under no_grad, in eval mode and at
    another batch size, Dynamo would compile the tower again, with a dynamic batch, costing
    more per process than eager validation does over a run of tens of epochs.
    """
    rows = torch.arange(world.rank, len(split), world.size)
    with torch.compiler.set_stance("force_eager"):
        logits = split_logits(model, split, augment, batch_size, dtype, rows)
    labels = split.labels[rows.to(split.device)]
    sums = torch.stack([F.cross_entropy(logits, labels, reduction="sum"),
                        (logits.argmax(dim=1) == labels).sum().float()]).double()
    loss, accuracy = (world.reduce_(sums) / len(split)).tolist()
    return loss, accuracy


class TrainStep(nn.Module):
    """The model and its objective as one module whose forward is the training loss, so
    DistributedDataParallel, which hooks into forward, sees the whole computation."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective  # not a module: its teacher stays out of DDP

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.objective.loss(self.model, batch)


def accumulate_gradients(step: nn.Module, micro_batches: Iterable[Batch], group_size: int,
                         scaler: torch.amp.GradScaler, dtype: torch.dtype | None, bar=None,
                         world_size: int = 1
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backpropagate this process's share of one effective batch of `group_size` images,
    given as micro-batches to `step` (a TrainStep, or one wrapped in DDP).

    Each micro-batch's mean loss weighs by its share of the group (× world_size, which DDP's
    gradient averaging divides out), so the gradient is the mean over the whole effective
    batch, as one big batch in one process would give; DDP synchronises only after the last
    micro-batch. Returns this process's summed [cross-entropy, image–text term], its number of
    correct predictions and whether every loss was finite, as device tensors (no host sync).
    """
    term_sums = correct = finite = None
    batches = iter(micro_batches)
    batch = next(batches)
    while batch is not None:
        following = next(batches, None)
        labels = batch.labels
        last = following is None
        with contextlib.nullcontext() if last or not hasattr(step, "no_sync") \
                else step.no_sync():
            with autocast(labels.device, dtype):
                loss, logits, terms = step(batch)
            scaler.scale(loss * (len(labels) * world_size / group_size)).backward()
        batch_terms = terms.float() * len(labels)
        batch_correct = (logits.detach().argmax(dim=1) == labels).sum()
        batch_finite = torch.isfinite(loss.detach())
        term_sums = batch_terms if term_sums is None else term_sums + batch_terms
        correct = batch_correct if correct is None else correct + batch_correct
        finite = batch_finite if finite is None else finite & batch_finite
        if bar is not None:
            bar.update(len(labels) * world_size)
        batch = following
    return term_sums, correct, finite


_NO_BAD_STEP = 2**62


class Trainer:
    """One fine-tuning run, resumable at any epoch boundary: `state_dict()` holds everything
    the next epoch depends on (weights, optimiser, schedule, scaler, the objective's state,
    the random streams, the history).

    Shuffling and crops come from two seeded streams drawn once per epoch for all images, so
    every process draws the same and an image's crop is the same whatever the process count.
    A compiled run drops the epoch's short last step, so the compiled step sees one shape.
    """

    def __init__(self, model: nn.Module, objective: Objective, train_split: CachedSplit,
                 val_split: CachedSplit, augment: DeviceAugment, config: TrainConfig,
                 world: World = ALONE) -> None:
        if config.batch_size % world.size:
            raise StageError(f"batch_size {config.batch_size} does not split evenly over "
                             f"{world.size} processes")
        share = config.batch_size // world.size
        self.micro = config.micro_batch_size or share
        if share % self.micro:
            raise StageError(f"each of {world.size} processes takes {share} images a step, "
                             f"not a multiple of micro_batch_size {self.micro}")
        self.model, self.objective, self.config, self.world = model, objective, config, world
        self.train_split, self.val_split, self.augment = train_split, val_split, augment
        self.device = train_split.device
        self.dtype = autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.dtype == torch.float16)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay,
                                                            config.layer_decay),
                                           lr=config.lr, betas=config.betas,
                                           fused=self.device.type == "cuda")
        self.drop_last = config.compile
        self.steps_per_epoch = steps_per_epoch(len(train_split), config.batch_size,
                                               world.size, self.drop_last)
        if not self.steps_per_epoch:
            raise StageError(f"{len(train_split)} training images make no full step of "
                             f"batch_size {config.batch_size}; lower batch_size")
        self.scheduler = make_scheduler(self.optimizer, config.lr, config.epochs,
                                        config.warmup_epochs, self.steps_per_epoch)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.crops = torch.Generator(device=self.device).manual_seed(config.seed)
        self.cache_bytes = resident_cache_bytes(train_split, val_split)
        self.frozen = {name for name, param in model.named_parameters()
                       if not param.requires_grad}
        """Parameters training never changes (a frozen text tower): rebuilt from `pretrained`,
        so the resume state leaves them out."""
        self.ema = None
        """timm's EMA of the weights (ModelEmaV3: one fused lerp per step, no host sync),
        apart from A-CLIP's teacher."""
        if config.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=config.ema_decay)
        self.step = 0
        self.history: list[EpochRecord] = []
        self.train_step: nn.Module = TrainStep(model, objective)
        if world.grouped:
            self.train_step = data_parallel(self.train_step)

    def _trained(self, module: nn.Module) -> dict:
        return {key: value for key, value in module.state_dict().items()
                if key not in self.frozen}

    def state_dict(self) -> dict:
        return {
            "model": self._trained(self.model), "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self._trained(self.ema.module),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "objective": self.objective.state_dict(), "step": self.step,
            "history": [asdict(record) for record in self.history],
            # numpy's and Python's generators are not drawn from after the model is built.
            "rng": {"shuffle": self.shuffle.get_state(), "crops": self.crops.get_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(self.device)
                    if self.device.type == "cuda" else None},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`, loaded on the CPU (`torch.load(map_location="cpu")`):
        random-generator states must be CPU byte tensors; weights and optimiser state move to
        their parameters' device as they load."""
        for module, weights in ((self.model, state["model"]),
                                (self.ema and self.ema.module, state["ema"])):
            if module is None:
                continue
            missing, unexpected = module.load_state_dict(weights, strict=False)
            if unexpected or not set(missing) <= self.frozen:
                raise StageError(f"the resume state does not fit this model (missing "
                                 f"{sorted(set(missing) - self.frozen)[:3]}, unexpected "
                                 f"{unexpected[:3]}); delete it to start afresh")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])
        self.step = state["step"]
        self.history = [EpochRecord(**record) for record in state["history"]]
        rng = state["rng"]
        self.shuffle.set_state(rng["shuffle"])
        self.crops.set_state(rng["crops"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)

    def fit(self, on_epoch: Callable[[EpochRecord], None] = lambda record: None,
            describe: str = "train") -> list[EpochRecord]:
        """Train the remaining epochs; call `on_epoch` after each with its record."""
        first = len(self.history) + 1
        for epoch in range(first, self.config.epochs + 1):
            self.history.append(replace(self._epoch(epoch, describe), warm_up=epoch == first))
            on_epoch(self.history[-1])
        return self.history

    def epoch_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next epoch's image order (host, pinned on a GPU) and every image's crop."""
        order = torch.randperm(len(self.train_split), generator=self.shuffle)
        crops = self.augment.crop_params(len(self.train_split), self.crops, self.device)
        return self.train_split.host_index(order), crops

    def train_step_on(self, group: torch.Tensor, crops: torch.Tensor, bar=None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimiser step on an effective batch (this process's share of `group`); the
        summed loss terms, correct count and finiteness stay on the device."""
        world = self.world
        share = self._share(group)
        self.scheduler.step_update(self.step)
        micro_batches = (self._augmented(crops, *parts) for parts in
                         self.train_split.batches(share, self.micro, with_index=True))
        sums = accumulate_gradients(self.train_step, micro_batches, len(group), self.scaler,
                                    self.dtype, bar, world.size)
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        self.objective.after_optimizer_step(self.step,
                                            self.config.epochs * self.steps_per_epoch)
        return sums

    def _share(self, group: torch.Tensor) -> torch.Tensor:
        """This process's part of an effective batch."""
        return group.tensor_split(self.world.size)[self.world.rank]

    def refresh(self, epoch: int) -> float:
        """The objective's per-epoch work under the run's autocast; its seconds (0 when it
        had none)."""
        synchronize(self.device)
        started = time.perf_counter()
        with autocast(self.device, self.dtype):
            worked = self.objective.before_epoch(epoch, self.train_split, self.augment,
                                                 self.world)
        synchronize(self.device)
        return time.perf_counter() - started if worked else 0.0

    def _epoch(self, epoch: int, describe: str) -> EpochRecord:
        config, device, world = self.config, self.device, self.world
        reset_peak_memory(device)
        world.wait_for_all()
        started = time.perf_counter()
        refresh_time = world.reduce(self.refresh(epoch), "max")
        self.model.train()
        term_sums = torch.zeros(2, device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        first_bad_step = torch.full((), _NO_BAD_STEP, device=device, dtype=torch.long)
        order, crops = self.epoch_inputs()
        groups = list(effective_batches(order, config.batch_size, world.size, self.drop_last))
        self.train_split.plan([share[start:start + self.micro] for share in map(self._share, groups)
                               for start in range(0, len(share), self.micro)])
        seen = 0
        bar = progress(total=len(order), unit="img", leave=False, enabled=world.is_main,
                       desc=f"{describe} epoch {epoch}/{config.epochs}")
        for group in groups:
            group_terms, group_correct, finite = self.train_step_on(group, crops, bar)
            term_sums += group_terms
            correct += group_correct
            first_bad_step = torch.where(finite, first_bad_step,
                                         first_bad_step.clamp(max=self.step - 1))
            seen += len(group)
            if not bar.disable and self.step % config.log_every == 0:  # this process's share
                local_seen = seen // world.size
                bar.set_postfix(loss=f"{term_sums[0].item() / local_seen:.3f}",
                                acc=f"{correct.item() / local_seen:.3f}")
        bar.close()
        self._check_finite(first_bad_step, epoch)
        sums = world.reduce_(torch.cat([term_sums.double(), correct.double().view(1)]))
        train_loss, image_text_loss, train_acc = (sums / seen).tolist()
        synchronize(device)
        epoch_time = world.reduce(time.perf_counter() - started, "max")
        peak = world.reduce(peak_memory_mb(device) - self.cache_bytes / 2**20, "max")
        started = time.perf_counter()
        val_loss, val_acc = validate(self.model, self.val_split, self.augment, self.micro * 2,
                                     self.dtype, world)
        ema_loss, ema_acc = (None, None) if self.ema is None else validate(
            self.ema.module, self.val_split, self.augment, self.micro * 2, self.dtype, world)
        val_time = world.reduce(time.perf_counter() - started, "max")  # the EMA's too
        lr = max(group["lr"] for group in self.optimizer.param_groups)  # the head's
        return EpochRecord(epoch, train_loss, image_text_loss, train_acc, val_loss, val_acc,
                           epoch_time, refresh_time, seen / epoch_time, peak, lr, val_time,
                           ema_val_loss=ema_loss, ema_val_acc=ema_acc)

    def _augmented(self, crops: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   index: torch.Tensor) -> Batch:
        crop = crops[index]
        whole = self.augment.eval(images) if self.objective.wants_whole_view else None
        return Batch(self.augment.warp(images, crop), labels, index, crop, whole)

    def _check_finite(self, first_bad_step: torch.Tensor, epoch: int) -> None:
        bad = int(self.world.reduce_(first_bad_step.clone(), "min").item())
        if bad < _NO_BAD_STEP:
            raise TrainingDiverged(
                f"the loss became NaN or infinite at epoch {epoch}, step {bad + 1} "
                f"(step {bad - (epoch - 1) * self.steps_per_epoch + 1} of the epoch); lower "
                f"lr, raise warmup_epochs or use precision: fp32")

