"""evaluate stage: score one model's best checkpoint on the validation split.

    python -m harclip.evaluate clip

Uses all tokens and the deterministic view. Writes metrics/<name>/eval.json (accuracy,
macro-F1, top-5 accuracy, per-class accuracy and, for a pretrained backbone, the zero-shot
accuracy of the untouched model: the epoch-0 baseline) and metrics/<name>/predictions.csv
(actual and predicted class per image: DVC's confusion plots read it).
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score, top_k_accuracy_score

from harclip import stage
from harclip.augment import DeviceAugment
from harclip.config import EvaluateConfig, TrainConfig, load_params
from harclip.engine import CachedSplit, autocast_dtype, predict
from harclip.hardware import resolve_device
from harclip.models import (
    HarClassifier,
    image_normalisation,
    load_checkpoint,
    model_image_size,
)
from harclip.preprocess import CACHE_DIR, load_split
from harclip.train import METHODS, build_model


def predict_logits(model: HarClassifier, split: CachedSplit, batch_size: int) -> np.ndarray:
    """Class logits for every image of a split, on the model's own deterministic view."""
    augment = DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip))
    dtype = autocast_dtype("auto", split.device)
    return predict(model, split, augment, batch_size, dtype).cpu().numpy()


def classification_metrics(labels: np.ndarray, logits: np.ndarray,
                           class_names: list[str]) -> dict:
    """scikit-learn's accuracy, macro-F1, top-5 accuracy and per-class accuracy (recall)."""
    predicted = logits.argmax(axis=1)
    every_class = list(range(len(class_names)))
    per_class = recall_score(labels, predicted, labels=every_class, average=None,
                             zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=every_class, average="macro",
                                   zero_division=0)),
        "top5_accuracy": float(top_k_accuracy_score(labels, logits, k=5, labels=every_class)),
        "per_class_accuracy": dict(zip(class_names, map(float, per_class), strict=True)),
    }


def zero_shot_accuracy(config: TrainConfig, split: CachedSplit, batch_size: int) -> float:
    """Accuracy of the untouched pretrained backbone with the class-prompt head: the model
    training starts from, built the way training builds it."""
    model, _ = build_model(replace(config, head_init="text"))
    logits = predict_logits(model.to(split.device), split, batch_size)
    labels = split.labels.cpu().numpy()
    return float(accuracy_score(labels, logits.argmax(axis=1)))


def evaluate(name: str, config: EvaluateConfig, cache_dir: Path = CACHE_DIR,
             models_dir: Path = Path("models"), metrics_dir: Path = Path("metrics")) -> dict:
    """Evaluate models/<name>.pt; write eval.json and predictions.csv; return the metrics."""
    checkpoint = models_dir / f"{name}.pt"
    if not checkpoint.is_file():
        raise stage.StageError(f"{checkpoint}: checkpoint not found; the train_{name} stage "
                               f"makes it (`dvc repro train_{name}`)")
    model, meta = load_checkpoint(checkpoint)
    device = resolve_device(config.device)
    images, labels = load_split(cache_dir, "val")
    split = CachedSplit(images, labels, device)
    logits = predict_logits(model.to(device), split, config.batch_size)
    class_names = meta["class_names"]
    metrics = classification_metrics(labels, logits, class_names)
    train_config = TrainConfig(**{key: value for key, value in meta["params"].items()
                                  if key in TrainConfig.__dataclass_fields__})
    metrics["zero_shot_accuracy"] = (
        zero_shot_accuracy(train_config, split, config.batch_size)
        if config.zero_shot and train_config.pretrained else None)
    metrics.update(val_images=len(labels), checkpoint_epoch=meta["epoch"],
                   model=meta["model"], pretrained=train_config.pretrained)
    out = metrics_dir / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("actual", "predicted"))
        writer.writerows((class_names[a], class_names[p])
                         for a, p in zip(labels, logits.argmax(axis=1), strict=True))
    stage.log.info("evaluate %s: accuracy %.3f, macro-F1 %.3f, top-5 %.3f%s", name,
                   metrics["accuracy"], metrics["macro_f1"], metrics["top5_accuracy"],
                   "" if metrics["zero_shot_accuracy"] is None else
                   f", zero-shot {metrics['zero_shot_accuracy']:.3f}")
    return metrics


def main() -> None:
    cli = stage.parser("Evaluate models/<method>.pt on the validation split; write "
                       "metrics/<method>/eval.json and predictions.csv.")
    cli.add_argument("method", choices=METHODS, help="which model to evaluate")
    cli.add_argument("--cache", type=Path, default=CACHE_DIR, help="input (%(default)s)")
    args = cli.parse_args()
    stage.run(lambda: evaluate(args.method, load_params(args.params).evaluate, args.cache))


if __name__ == "__main__":
    main()
