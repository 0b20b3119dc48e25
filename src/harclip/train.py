"""train_clip / train_sglip / train_aclip: fine-tune one model, keep its best epoch.

    python -m harclip.train clip      # reads params.yaml section train_clip

Writes models/<name>.pt (the best-val-acc weights, with everything needed to use them),
logs/<name>/epochs.tsv (one row per epoch, read by `dvc plots`), logs/<name>/train.log (the
console's epoch lines) and metrics/<name>/train.json (the headline numbers).

A run keeps its state after every epoch in .harclip/resume/<name>/ (outside the stage's
outputs, which DVC deletes before it reruns a stage): rerun after an interruption and it
continues from its last complete epoch, unless its params or data changed since. A finished
run removes that state, so the next run starts afresh. With nprocs above 1 the stage relaunches
itself under torchrun; only rank 0 writes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
import shutil
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from harclip import distributed, stage
from harclip.aclip import AclipObjective
from harclip.augment import DeviceAugment
from harclip.config import AclipTrainConfig, Params, TrainConfig, load_params
from harclip.distributed import ALONE, World
from harclip.engine import (
    CachedSplit,
    ContrastiveObjective,
    EpochRecord,
    Objective,
    Trainer,
    record_row,
)
from harclip.har import CLASS_NAMES
from harclip.hardware import describe
from harclip.models import (
    HarClassifier,
    PromptEncoder,
    build_classifier,
    create_tokenizer,
    image_normalisation,
    init_head,
    is_siglip,
    model_image_size,
    save_checkpoint,
)
from harclip.preprocess import CACHE_DIR, load_split
from harclip.stage import StageError

METHODS = ("clip", "sglip", "aclip")
RESUME_DIR = Path(".harclip/resume")
RESUME_FORMAT = "harclip-resume"
RESUME_INDEPENDENT = ("nprocs", "log_every")
"""Params a run can resume across: the trajectory does not depend on them."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: TrainConfig) -> tuple[HarClassifier, PromptEncoder]:
    """The classifier with its class-prompt head, and the prompt encoder it was built from."""
    model = build_classifier(config.model, config.pretrained, len(CLASS_NAMES),
                             config.image_size)
    prompts = PromptEncoder(create_tokenizer(config.model), CLASS_NAMES,
                            config.prompt_templates)
    with torch.no_grad():
        init_head(model, prompts(model.clip), config.head_init)
    if not config.contrastive_weight:
        # The text tower served only to initialise the head: freeze it (no optimiser state).
        trainable = {id(p) for p in model.clip.visual.parameters()} | \
            {id(p) for p in model.head.parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in trainable)
    return model, prompts


def build_objective(config: TrainConfig, model: HarClassifier, prompts: PromptEncoder,
                    world: World = ALONE) -> Objective:
    if isinstance(config, AclipTrainConfig):
        return AclipObjective(model, prompts, config.aclip, config.contrastive_weight, world)
    if config.contrastive_weight:
        return ContrastiveObjective(prompts, config.contrastive_weight, is_siglip(model.clip),
                                    world)
    return Objective()


def run_fingerprint(config: TrainConfig, cache_dir: Path) -> str:
    """What a resumed run must share with the interrupted one: its params (but those in
    RESUME_INDEPENDENT) and its data (the cache's manifest of file hashes, or its labels)."""
    digest = hashlib.sha256()
    params = {k: v for k, v in asdict(config).items() if k not in RESUME_INDEPENDENT}
    digest.update(json.dumps(params, sort_keys=True).encode())
    manifest = cache_dir / "manifest.csv"
    for path in [manifest] if manifest.is_file() else sorted(cache_dir.glob("*_labels.npy")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_resume_state(path: Path, fingerprint: str, device: torch.device) -> dict | None:
    """The trainer state saved by an interrupted run with this fingerprint, else None."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say so and start afresh
        stage.log.warning("%s: unreadable (%s); starting afresh", path, err)
        return None
    if not isinstance(saved, dict) or saved.get("format") != RESUME_FORMAT:
        stage.log.warning("%s: not a harclip resume state; starting afresh", path)
        return None
    if saved["fingerprint"] != fingerprint:
        stage.log.info("%s: saved by a run with other params or data; starting afresh", path)
        return None
    return saved["trainer"]


def save_resume_state(path: Path, fingerprint: str, trainer: Trainer) -> None:
    partial = path.with_suffix(".partial")
    torch.save({"format": RESUME_FORMAT, "fingerprint": fingerprint,
                "trainer": trainer.state_dict()}, partial)
    partial.replace(path)


def best_so_far(checkpoint: Path) -> dict:
    """The epoch and val acc of a run's best checkpoint so far, read from the file itself."""
    if not checkpoint.is_file():
        return {"val_acc": -1.0}
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return {"val_acc": saved["val_acc"], "epoch": saved["epoch"]}


class RunLog:
    """Per-epoch outputs: the TSV DVC plots, the text log and the console summary line."""

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name, self.log_dir = name, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.tsv = log_dir / "epochs.tsv"
        self.rows: list[dict] = []
        self.text = logging.FileHandler(log_dir / "train.log", mode="w")
        self.text.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        stage.log.addHandler(self.text)

    def epoch(self, record: EpochRecord) -> None:
        self.rows.append(record_row(record))
        with open(self.tsv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(EpochRecord)],
                                    delimiter="\t")
            writer.writeheader()
            writer.writerows(self.rows)
        stage.log.info(
            "%s epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | %.1f s, "
            "%.0f img/s, peak %.0f MB, lr %.2e", self.name, record.epoch, record.train_loss,
            record.train_acc, record.val_loss, record.val_acc, record.epoch_time_s,
            record.images_per_s, record.peak_memory_mb, record.lr)

    def close(self) -> None:
        stage.log.removeHandler(self.text)
        self.text.close()


def run(name: str, config: TrainConfig, cache_dir: Path = CACHE_DIR,
        models_dir: Path = Path("models"), logs_dir: Path = Path("logs"),
        metrics_dir: Path = Path("metrics"), resume_dir: Path = RESUME_DIR) -> dict:
    """Train one model (resuming an interrupted run of the same params and data); write its
    checkpoint, logs and metrics from rank 0 and return the metrics there (elsewhere {})."""
    world = distributed.join(config.device)
    try:
        return _run(name, config, world, cache_dir, models_dir, logs_dir, metrics_dir,
                    resume_dir / name)
    finally:
        distributed.leave()


def _run(name: str, config: TrainConfig, world: World, cache_dir: Path, models_dir: Path,
         logs_dir: Path, metrics_dir: Path, work_dir: Path) -> dict:
    seed_everything(config.seed)
    device = world.device
    if world.local_size != config.nprocs:
        stage.log.warning("%d processes on this machine, not the %d of nprocs: torchrun's "
                          "own --nproc-per-node decides (the results do not depend on it)",
                          world.local_size, config.nprocs)
    train_images, train_labels = load_split(cache_dir, "train")
    val_images, val_labels = load_split(cache_dir, "val")
    model, prompts = build_model(config)
    model.to(device)
    prompts.to(device)
    objective = build_objective(config, model, prompts, world)
    if config.compile:
        model.clip.visual.compile()
    augment = DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip),
                            scale=(config.augment.scale_min, 1.0), flip=config.augment.flip)
    train_split = CachedSplit(train_images, train_labels, device)
    val_split = CachedSplit(val_images, val_labels, device)
    trainer = Trainer(model, objective, train_split, val_split, augment, config, world)
    fingerprint = run_fingerprint(config, cache_dir)
    state_path, best_path = work_dir / "state.pt", work_dir / "best.pt"
    resumed = load_resume_state(state_path, fingerprint, device) \
        if best_path.is_file() else None  # each epoch writes best.pt before the state
    # Also a barrier: every process has read the state before rank 0 may clear it.
    if world.reduce(resumed is None, "max") != world.reduce(resumed is None, "min"):
        raise StageError(f"{state_path}: not every process can read this resume state; put "
                         f"the repo on a file system all machines share, or delete it")
    if resumed is not None:
        trainer.load_state_dict(resumed)
    elif world.is_main and work_dir.exists():
        shutil.rmtree(work_dir)
    best = best_so_far(best_path) if resumed is not None else {"val_acc": -1.0}
    run_log = RunLog(name, logs_dir / name) if world.is_main else None
    stage.log.info("%s: %s (pretrained: %s) on %s%s, %d train / %d val images, %d epochs",
                   name, config.model, config.pretrained, device,
                   f" × {world.size} processes" if world.size > 1 else "", len(train_split),
                   len(val_split), config.epochs)
    if resumed is not None and world.is_main:
        stage.log.info("%s: resuming after epoch %d from %s", name, len(trainer.history),
                       state_path)
        for record in trainer.history:
            run_log.epoch(record)

    def on_epoch(record: EpochRecord) -> None:
        if not world.is_main:
            return
        run_log.epoch(record)
        if record.val_acc > best["val_acc"]:
            best.update(val_acc=record.val_acc, epoch=record.epoch)
            save_checkpoint(best_path, model, config.model, CLASS_NAMES, {
                "params": asdict(config), "epoch": record.epoch, "val_acc": record.val_acc})
        save_resume_state(state_path, fingerprint, trainer)

    try:
        history = trainer.fit(on_epoch, describe=name)
    except KeyboardInterrupt:
        if state_path.is_file():
            stage.log.error("%s: interrupted; rerun to resume after the last complete epoch "
                            "(state in %s)", name, work_dir)
        raise
    finally:
        if run_log is not None:
            run_log.close()
    if not world.is_main:
        return {}
    checkpoint = models_dir / f"{name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    best_path.replace(checkpoint)
    metrics = {
        "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
        "final_val_acc": history[-1].val_acc, "final_train_acc": history[-1].train_acc,
        "mean_epoch_time_s": float(np.mean([r.epoch_time_s for r in history])),
        "mean_images_per_s": float(np.mean([r.images_per_s for r in history])),
        "peak_memory_mb": max(r.peak_memory_mb for r in history),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": str(device),
        "processes": world.size,
        "hardware": describe(),
    }
    (metrics_dir / name).mkdir(parents=True, exist_ok=True)
    (metrics_dir / name / "train.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(work_dir)
    stage.log.info("%s: best val acc %.3f at epoch %d, checkpoint %s", name,
                   metrics["best_val_acc"], metrics["best_epoch"], checkpoint)
    return metrics


def section(params: Params, name: str) -> TrainConfig:
    return getattr(params, f"train_{name}")


def main() -> None:
    cli = stage.parser("Fine-tune one model (its params section is train_<method>) on "
                       "data/cache; write models/<method>.pt, logs/<method>/ and "
                       "metrics/<method>/train.json.")
    cli.add_argument("method", choices=METHODS, help="which training stage to run")
    cli.add_argument("--cache", type=Path, default=CACHE_DIR, help="input (%(default)s)")
    args = cli.parse_args()

    def launch() -> None:
        config = section(load_params(args.params), args.method)  # invalid params: fail here
        if config.nprocs > 1 and not distributed.launched():
            distributed.relaunch(config.nprocs, config.device, "harclip.train", sys.argv[1:])
        run(args.method, config, args.cache)

    stage.run(launch)


if __name__ == "__main__":
    main()
