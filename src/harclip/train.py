"""train_clip / train_sglip / train_aclip: fine-tune one model, keep its best epoch.

    python -m harclip.train clip      # reads params.yaml section train_clip

Writes models/<name>.pt (the best-val-acc weights, with everything needed to use them),
logs/<name>/epochs.tsv (one row per epoch, read by `dvc plots`), logs/<name>/train.log (the
console's epoch lines) and metrics/<name>/train.json (the headline numbers).
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from harclip import stage
from harclip.aclip import AclipObjective
from harclip.augment import DeviceAugment
from harclip.config import AclipTrainConfig, Params, TrainConfig, load_params
from harclip.engine import (
    CachedSplit,
    ContrastiveObjective,
    EpochRecord,
    Objective,
    record_row,
    resolve_device,
    train,
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

METHODS = ("clip", "sglip", "aclip")


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


def build_objective(config: TrainConfig, model: HarClassifier,
                    prompts: PromptEncoder) -> Objective:
    if isinstance(config, AclipTrainConfig):
        return AclipObjective(model, prompts, config.aclip, config.contrastive_weight)
    if config.contrastive_weight:
        return ContrastiveObjective(prompts, config.contrastive_weight, is_siglip(model.clip))
    return Objective()


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
        metrics_dir: Path = Path("metrics")) -> dict:
    """Train one model; write its checkpoint, logs and metrics; return the metrics."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    train_images, train_labels = load_split(cache_dir, "train")
    val_images, val_labels = load_split(cache_dir, "val")
    model, prompts = build_model(config)
    model.to(device)
    prompts.to(device)
    objective = build_objective(config, model, prompts)
    if config.compile:
        model.clip.visual.compile()
    augment = DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip),
                            scale=(config.augment.scale_min, 1.0), flip=config.augment.flip)
    train_split = CachedSplit(train_images, train_labels, device)
    val_split = CachedSplit(val_images, val_labels, device)
    run_log = RunLog(name, logs_dir / name)
    checkpoint = models_dir / f"{name}.pt"
    best: dict = {"val_acc": -1.0}
    stage.log.info("%s: %s (pretrained: %s) on %s, %d train / %d val images, %d epochs",
                   name, config.model, config.pretrained, device, len(train_split),
                   len(val_split), config.epochs)

    def on_epoch(record: EpochRecord) -> None:
        run_log.epoch(record)
        if record.val_acc > best["val_acc"]:
            best.update(val_acc=record.val_acc, epoch=record.epoch)
            save_checkpoint(checkpoint, model, config.model, CLASS_NAMES, {
                "params": asdict(config), "epoch": record.epoch, "val_acc": record.val_acc})

    try:
        history = train(model, objective, train_split, val_split, augment, config, on_epoch,
                        describe=name)
    finally:
        run_log.close()
    metrics = {
        "best_val_acc": best["val_acc"], "best_epoch": best["epoch"],
        "final_val_acc": history[-1].val_acc, "final_train_acc": history[-1].train_acc,
        "mean_epoch_time_s": float(np.mean([r.epoch_time_s for r in history])),
        "mean_images_per_s": float(np.mean([r.images_per_s for r in history])),
        "peak_memory_mb": max(r.peak_memory_mb for r in history),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "device": str(device),
        "hardware": describe(),
    }
    (metrics_dir / name).mkdir(parents=True, exist_ok=True)
    (metrics_dir / name / "train.json").write_text(json.dumps(metrics, indent=2) + "\n")
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
    stage.run(lambda: run(args.method, section(load_params(args.params), args.method),
                          args.cache))


if __name__ == "__main__":
    main()
