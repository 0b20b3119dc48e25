"""The train_<method> stages' work: fine-tune one model and keep its best epoch.

Writes models/<name>.pt (the best-val-acc weights, with everything needed to use them) and,
in logs/<name>/, DVCLive's per-epoch series, params and summary (the stage's metrics), the
console's epoch lines (train.log) and run.json (see `harclip.data.records`).

A run keeps its state after every epoch in .harclip/resume/<name>/ (outside the stage's
outputs, which DVC deletes before it reruns a stage): rerun after an interruption and it
continues from its last complete epoch, unless its params or data changed since. A finished
run removes that state, so the next run starts afresh. Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from harclip.config.schema import AclipTrainConfig, TrainConfig
from harclip.data.cache import CACHE_DIR, cache_classes, load_split
from harclip.model.backbones import image_normalisation, model_image_size
from harclip.model.calibration import fit_temperature
from harclip.model.checkpoints import load_checkpoint, save_checkpoint
from harclip.model.classifier import HarClassifier, PromptEncoder, build_model
from harclip.model.feed import CachedSplit
from harclip.model.scoring import split_logits
from harclip.model.storage import save_atomically
from harclip.model.views import DeviceAugment
from harclip.runtime import distributed
from harclip.runtime.devices import autocast_dtype, describe, enable_tf32
from harclip.runtime.distributed import World
from harclip.runtime.errors import StageError
from harclip.runtime.files import exclusive
from harclip.runtime.log import log
from harclip.train.aclip import AclipObjective
from harclip.train.engine import EpochRecord, Trainer
from harclip.train.objectives import ContrastiveObjective, Objective
from harclip.train.resume import (
    RESUME_DIR,
    load_resume_state,
    run_fingerprint,
    save_resume_state,
    snapshot,
)
from harclip.train.run_log import RunLog
from harclip.train.shots import few_shot_rows


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_objective(config: TrainConfig, model: HarClassifier,
                    prompts: PromptEncoder | None) -> Objective:
    smoothing = config.label_smoothing
    if isinstance(config, AclipTrainConfig):
        return AclipObjective(model, prompts, config.aclip, config.contrastive_weight,
                              config.seed, smoothing)
    if config.contrastive_weight:
        return ContrastiveObjective(prompts, config.contrastive_weight, smoothing)
    return Objective(smoothing)


def timing_summary(history: list[EpochRecord]) -> dict:
    """Speed and memory over the run. The headline time and throughput are the steady state:
    every epoch but the warm-up ones (the first, and a resumed run's first, which compile and
    warm up again), whose time is reported apart."""
    steady = [r for r in history if not r.warm_up] or history
    return {
        "mean_epoch_time_s": float(np.mean([r.epoch_time_s for r in steady])),
        "mean_refresh_time_s": float(np.mean([r.refresh_time_s for r in steady])),
        "mean_images_per_s": float(np.mean([r.images_per_s for r in steady])),
        "first_epoch_time_s": history[0].epoch_time_s,
        "peak_memory_mb": max(r.peak_memory_mb for r in history),
    }


def live_summary(history: list[EpochRecord], best: dict, trainable: int) -> dict:
    """The summary `dvc exp show` lists per model (`harclip.data.records.HEADLINE`): the
    best epoch so far, the steady-state time per epoch, throughput and peak memory, and how
    many parameters train. Its val accuracy is evaluate's (eval.json), on the same checkpoint."""
    timing = timing_summary(history)
    return {"best_epoch": best["epoch"],
            "epoch_s": round(timing["mean_epoch_time_s"], 3),
            "img_s": round(timing["mean_images_per_s"], 1),
            "peak_mb": round(timing["peak_memory_mb"], 1),
            "trainable": trainable}


def run(name: str, config: TrainConfig, cache_dir: Path = CACHE_DIR,
        models_dir: Path = Path("models"), logs_dir: Path = Path("logs"),
        resume_dir: Path = RESUME_DIR) -> dict:
    """Train one model (resuming an interrupted run of the same params and data); write its
    checkpoint and logs from rank 0 and return run.json's content there (elsewhere {})."""
    world = distributed.join(config.device)
    try:
        with run_lock(resume_dir / f"{name}.lock", f"train_{name}", world):
            return _run(name, config, world, cache_dir, models_dir, logs_dir,
                        resume_dir / name)
    finally:
        distributed.leave()


@contextlib.contextmanager
def run_lock(lock_file: Path, what: str, world: World) -> Iterator[None]:
    """One live run per model: rank 0 holds the lock, and every process stops together when
    it cannot (a second run would resume from, or delete, the state the live one writes)."""
    with contextlib.ExitStack() as stack:
        refused = None
        if world.is_main:
            try:
                stack.enter_context(exclusive(lock_file, what))
            except StageError as err:
                refused = err
        if world.reduce(refused is not None, "max"):
            raise refused or StageError(f"{what}: rank 0 could not take the run's lock")
        yield


def _run(name: str, config: TrainConfig, world: World, cache_dir: Path, models_dir: Path,
         logs_dir: Path, work_dir: Path) -> dict:
    seed_everything(config.seed)
    device = world.device
    enable_tf32(device)
    if world.local_size != config.nprocs:
        log.warning("%d processes on this machine, not the %d of nprocs: torchrun's "
                    "own --nproc-per-node decides (the results do not depend on it)",
                    world.local_size, config.nprocs)
    train_images, train_labels = load_split(cache_dir, "train")
    val_images, val_labels = load_split(cache_dir, "val")
    class_names = cache_classes(cache_dir)
    if config.shots_per_class is not None:
        train_images, train_labels, config = few_shot(name, config, world, train_images,
                                                      train_labels, class_names)
    model, prompts = build_model(config, class_names, section=f"train_{name}")
    model.to(device)
    if prompts is not None:
        prompts.to(device)
    objective = build_objective(config, model, prompts)
    augment = DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip),
                            scale=(config.augment.scale_min, 1.0), flip=config.augment.flip)
    train_split, val_split = (CachedSplit(images, labels, device, config.cache_in_memory)
                              for images, labels in ((train_images, train_labels),
                                                     (val_images, val_labels)))
    if streamed := [f"{split} ({data.nbytes / 2**20:,.0f} MB)" for split, data in
                    (("train", train_split), ("val", val_split)) if data.where == "stream"]:
        log.info("%s: the %s images stream from %s (cache_in_memory: %s)", name,
                 " and ".join(streamed), cache_dir, config.cache_in_memory)
    trainer = Trainer(model, objective, train_split, val_split, augment, config, world)
    if config.compile:  # after the Trainer's copies (the weights' EMA) are made
        model.clip.visual.compile()
        objective.compile()
    fingerprint = run_fingerprint(config, cache_dir, device)
    state_path, best_path = work_dir / "state.pt", work_dir / "best.pt"
    best_at_state = work_dir / "best-at-state.pt"  # best.pt as it was when the state was saved
    resumed = load_resume_state(state_path, fingerprint) if best_at_state.is_file() else None
    # Also a barrier: every process has read the state before rank 0 may clear it.
    if world.reduce(resumed is None, "max") != world.reduce(resumed is None, "min"):
        raise StageError(f"{state_path}: not every process can read this resume state; put "
                         f"the repo on a file system all machines share, or delete it")
    if resumed is not None:
        trainer.load_state_dict(resumed)
        if world.is_main:  # a later best.pt belongs to epochs this run will redo
            snapshot(best_at_state, best_path)
    elif world.is_main and work_dir.exists():
        shutil.rmtree(work_dir)
    best = best_of(trainer.history) if resumed is not None else {"val_acc": -1.0}
    run_log = RunLog(name, logs_dir / name, asdict(config)) if world.is_main else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("%s: %s (pretrained: %s) on %s%s, %d train / %d val images, %d epochs",
             name, config.model, config.pretrained, device,
             f" × {world.size} process{'es' if world.size > 1 else ''} (data-parallel)"
             if world.grouped else "",
             len(train_split), len(val_split), config.epochs)
    if resumed is not None and world.is_main:
        log.info("%s: resuming after epoch %d from %s", name, len(trainer.history),
                 state_path)
        for done in range(1, len(trainer.history) + 1):
            history = trainer.history[:done]
            run_log.epoch(history[-1], live_summary(history, best_of(history), trainable))

    save_times = []  # this process's end-of-epoch saves, outside the epoch time

    def on_epoch(record: EpochRecord) -> None:
        """Rank 0 saves the checkpoint when val improved and, every resume_every epochs but
        the last, the resume state (the state it writes holds this epoch's save time as 0;
        later states hold the time)."""
        if not world.is_main:
            return
        started = time.perf_counter()
        epoch_best = best_of([record])
        if epoch_best["val_acc"] > best["val_acc"]:
            best.update(epoch_best)
            save_checkpoint(best_path, trainer.ema.module if best["weights"] == "ema" else model,
                            config.model, class_names, {"params": asdict(config),
                                                        "epoch": record.epoch,
                                                        "val_acc": best["val_acc"],
                                                        "weights": best["weights"]})
        if record.epoch % config.resume_every == 0 and record.epoch < config.epochs:
            save_resume_state(state_path, fingerprint, trainer)
            snapshot(best_path, best_at_state)
        record.save_time_s = time.perf_counter() - started
        save_times.append(record.save_time_s)
        run_log.epoch(record, live_summary(trainer.history, best, trainable))

    try:
        history = trainer.fit(on_epoch, describe=name)
    except KeyboardInterrupt as err:
        if state_path.is_file():  # the one line the stage ends with says how to go on
            err.add_note(f"{name}: rerun to resume after the last saved epoch (every "
                         f"resume_every = {config.resume_every}; state in {work_dir})")
        raise
    finally:
        if run_log is not None:
            run_log.close()
    if not world.is_main:
        return {}
    summary = {
        "model": config.model, "pretrained": config.pretrained,
        "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
        "best_weights": best["weights"],
        "final_val_acc": history[-1].val_acc, "final_train_acc": history[-1].train_acc,
        **timing_summary(history),
        "mean_save_time_s": float(np.mean(save_times)) if save_times else 0.0,
        "cache_mb": (train_split.nbytes + val_split.nbytes) / 2**20,
        "cache_on_device": trainer.cache_bytes > 0 and device.type == "cuda",
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": trainable,
        "device": str(device),
        "processes": world.size,
        "hardware": describe(),
    }
    batch_size = trainer.micro * 2
    # The trained model, its optimiser, EMA and teacher are done with: freed before the
    # published weights load beside them to fit the temperature.
    trainer = objective = model = prompts = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    started = time.perf_counter()
    checkpoint = models_dir / f"{name}.pt"
    summary["temperature"] = calibrate(best_path, checkpoint, val_split, batch_size)
    summary["temperature_fit_s"] = time.perf_counter() - started
    run_log.finish(summary)
    shutil.rmtree(work_dir)
    log.info("%s: best val acc %.3f at epoch %d, temperature %.3f (fitted on val in %.1f s), "
             "checkpoint %s", name, summary["best_val_acc"], summary["best_epoch"],
             summary["temperature"], summary["temperature_fit_s"], checkpoint)
    return summary


def few_shot(name: str, config: TrainConfig, world: World, images: np.ndarray,
             labels: np.ndarray, class_names: list[str]) \
        -> tuple[np.ndarray, np.ndarray, TrainConfig]:
    """The training split cut to `shots_per_class` images a class, and the config with its
    batch capped to the images left where they are fewer: a multiple of the processes, its
    micro-batch the largest that still divides each process's share and is no larger than
    the one asked (the memory it bounds)."""
    rows, short = few_shot_rows(labels, config.shots_per_class, config.seed)
    log.info("%s: %d shot(s) per class: %d of the %d training images (drawn with seed %d)",
             name, config.shots_per_class, len(rows), len(labels), config.seed)
    if short:
        counts = np.bincount(labels, minlength=len(class_names))
        log.info("%s: %d class(es) have fewer than %d training images and give all of them: "
                 "%s", name, len(short), config.shots_per_class,
                 ", ".join(f"{class_names[c]} ({counts[c]})" for c in short))
    if len(rows) < config.batch_size:
        unit = math.lcm(world.size, config.nprocs)  # what the Trainer and the params divide
        batch = len(rows) - len(rows) % unit
        if not batch:
            raise StageError(f"train_{name}.shots_per_class {config.shots_per_class} gives "
                             f"{len(rows)} training images, fewer than the {unit} processes "
                             f"each step needs one for: raise shots_per_class, or run fewer "
                             f"processes")
        micro = config.micro_batch_size
        if micro:
            micro = max(d for d in range(1, micro + 1)
                        if (batch // world.size) % d == 0 and (batch // config.nprocs) % d == 0)
        log.info("%s: batch_size %d capped to %d, the %d training images%s", name,
                 config.batch_size, batch, len(rows),
                 f" over {world.size} processes" if world.size > 1 else "")
        config = replace(config, batch_size=batch, micro_batch_size=micro)
    if len(rows) == len(labels):  # every image: the split as it was (memory-mapped)
        return images, labels, config
    return np.asarray(images[rows]), labels[rows], config


def calibrate(best: Path, checkpoint: Path, val_split: CachedSplit, batch_size: int) -> float:
    """Fit the temperature of the best epoch's checkpoint on val, with the weights it holds
    scored as evaluate and predict score them, and publish it with the temperature as
    `checkpoint`: predict then reads calibrated probabilities from the file alone. Written
    beside `checkpoint` and renamed there, never moved from the work folder: `models/` may be
    on another file system."""
    model, meta = load_checkpoint(best)
    model.to(val_split.device)
    logits = split_logits(model, val_split, DeviceAugment.for_eval(meta), batch_size,
                          autocast_dtype("auto", val_split.device),
                          val_split.host_index(torch.arange(len(val_split))))
    temperature = fit_temperature(logits, val_split.labels)
    weights = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    save_atomically({**meta, "temperature": temperature, "state_dict": weights}, checkpoint)
    return temperature


def best_of(history: list[EpochRecord]) -> dict:
    """The best epoch among `history` as training chose it: the first with the highest val
    acc of its weights or, where there is one, their EMA (the weights on a tie); a resumed
    run replays its restored epochs with it."""
    scored = [(score, record.epoch, weights) for record in history
              for weights, score in (("raw", record.val_acc), ("ema", record.ema_val_acc))
              if score is not None]
    val_acc, epoch, weights = max(scored, key=lambda item: item[0])
    return {"val_acc": val_acc, "epoch": epoch, "weights": weights}
