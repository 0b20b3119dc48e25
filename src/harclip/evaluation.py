"""The evaluate stage's work: score one model's chosen checkpoint on the val and test splits.

Training picked the checkpoint's epoch on val, as the original study did, so the val figure
compares with the study's table; the test split, which no training step and no model selection
ever read, gives the honest figure. Uses all tokens, the deterministic view and the
checkpoint's own preprocessing (input size, mean, std).

Writes metrics/<name>/eval.json (the few numbers `dvc metrics diff` and `dvc exp show`
compare, under the model's name: val accuracy, and test accuracy, macro-F1 and top-5
accuracy; on val without a test split), metrics/<name>/report.json (every score per split,
per-class accuracy, class names, image counts and the untouched pretrained backbone's
zero-shot accuracy, the epoch-0 baseline) and metrics/<name>/predictions.csv (actual and
predicted class per test image, or per val image without a test split: DVC's confusion plots
read it).
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score, top_k_accuracy_score

from harclip import stage
from harclip.augment import DeviceAugment
from harclip.cache import CACHE_DIR, load_split
from harclip.checkpoints import load_checkpoint
from harclip.config import EvaluateConfig, TrainConfig
from harclip.engine import predict
from harclip.feed import CachedSplit
from harclip.hardware import autocast_dtype, resolve_device
from harclip.models import HarClassifier, build_model, preprocessing_of

TOP_K = 5


def predict_logits(model: HarClassifier, split: CachedSplit, batch_size: int,
                   view: dict) -> np.ndarray:
    """Class logits for every image of a split on the deterministic view that `view`
    (input size, mean, std: a checkpoint's own, or a pretrained tag's) describes."""
    dtype = autocast_dtype("auto", split.device)
    return predict(model, split, DeviceAugment.for_eval(view), batch_size,
                   dtype).cpu().numpy()


def classification_metrics(labels: np.ndarray, logits: np.ndarray,
                           class_names: list[str]) -> tuple[dict, dict]:
    """scikit-learn's accuracy, macro-F1 and top-5 accuracy (with more than 5 classes), and
    apart from them the per-class accuracy (recall).

    A class with no image in the split has no per-class figure (None) and stays out of the
    macro average, which covers the classes present (so a class too small to reach every
    split does not count as a 0 in the split it missed).
    """
    predicted = logits.argmax(axis=1)
    present = sorted(set(labels.tolist()))
    recall = dict(zip(present, recall_score(labels, predicted, labels=present, average=None,
                                            zero_division=0), strict=True))
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro",
                                   zero_division=0)),
    }
    if len(class_names) > TOP_K:
        metrics["top5_accuracy"] = float(top_k_accuracy_score(
            labels, logits, k=TOP_K, labels=list(range(len(class_names)))))
    per_class = {name: float(recall[index]) if index in recall else None
                 for index, name in enumerate(class_names)}
    return metrics, per_class


def zero_shot_model(config: TrainConfig, class_names: list[str]) -> HarClassifier:
    """The untouched pretrained backbone with the class-prompt head: the model training starts
    from, built the way training builds it (without adapters)."""
    model, _ = build_model(replace(config, head_init="text", tune="full"), class_names)
    return model.eval()


def accuracies(model: HarClassifier, splits: dict[str, CachedSplit], batch_size: int,
               view: dict) -> dict[str, float]:
    return {name: float(accuracy_score(split.labels.cpu().numpy(),
                                       predict_logits(model, split, batch_size, view)
                                       .argmax(axis=1)))
            for name, split in splits.items()}


def zero_shot_accuracy(config: TrainConfig, class_names: list[str],
                       splits: dict[str, CachedSplit], batch_size: int) -> dict[str, float]:
    """Accuracy per split of the zero-shot model (`zero_shot_model`), on its tag's own view."""
    model = zero_shot_model(config, class_names).to(next(iter(splits.values())).device)
    return accuracies(model, splits, batch_size, preprocessing_of(model.clip))


def wise_ft(fine_tuned: HarClassifier, config: TrainConfig, class_names: list[str],
            splits: dict[str, CachedSplit], alphas: tuple[float, ...], batch_size: int,
            view: dict) -> dict[str, dict[str, float]]:
    """WiSE-FT (Wortsman et al., 2022): accuracy per split of the weights
    θ(α) = (1 − α)·θ_zero-shot + α·θ_fine-tuned at each α, on the checkpoint's view."""
    device = next(iter(splits.values())).device
    mixed = zero_shot_model(config, class_names).to(device)
    start = {k: v.clone() for k, v in mixed.state_dict().items()}
    tuned = fine_tuned.state_dict()
    curve = {}
    for alpha in alphas:
        mixed.load_state_dict({key: torch.lerp(value, tuned[key].to(value), alpha)
                               if value.is_floating_point() else tuned[key]
                               for key, value in start.items()})
        curve[f"{alpha:g}"] = accuracies(mixed, splits, batch_size, view)
    return curve


def evaluate(name: str, config: EvaluateConfig, cache_dir: Path = CACHE_DIR,
             models_dir: Path = Path("models"), metrics_dir: Path = Path("metrics")) -> dict:
    """Evaluate models/<name>.pt on val and test; write eval.json, report.json and
    predictions.csv; return the metrics."""
    checkpoint = models_dir / f"{name}.pt"
    if not checkpoint.is_file():
        raise stage.StageError(f"{checkpoint}: checkpoint not found; the train_{name} stage "
                               f"makes it (`dvc repro train_{name}`)")
    model, meta = load_checkpoint(checkpoint)
    device = resolve_device(config.device)
    model.to(device)
    class_names = meta["class_names"]
    splits = {split: CachedSplit(*load_split(cache_dir, split), device)
              for split in ("val", "test")}
    splits = {split: data for split, data in splits.items() if len(data)}
    scores, report = {}, {"model": meta["model"], "checkpoint_epoch": meta["epoch"],
                          "classes": class_names, "images": {}, "per_class_accuracy": {},
                          "classes_scored": {}}
    for split, data in splits.items():
        labels = data.labels.cpu().numpy()
        if labels.max(initial=0) >= len(class_names):
            raise stage.StageError(f"{cache_dir}: labels up to {labels.max()} but {checkpoint} "
                                   f"knows {len(class_names)} classes; retrain on this cache")
        logits = predict_logits(model, data, config.batch_size, meta)
        scores[split], report["per_class_accuracy"][split] = \
            classification_metrics(labels, logits, class_names)
        report["images"][split] = len(labels)
        report["classes_scored"][split] = len(set(labels.tolist()))
        shown = (split, labels, logits.argmax(axis=1))  # the last: test when there is one
    train_config = TrainConfig(**{key: value for key, value in meta["params"].items()
                                  if key in TrainConfig.__dataclass_fields__})
    report.update(pretrained=train_config.pretrained, scores=scores, predictions_split=shown[0])
    if config.zero_shot and train_config.pretrained:
        report["zero_shot_accuracy"] = zero_shot_accuracy(train_config, class_names, splits,
                                                          config.batch_size)
    metrics = headline(scores)
    if config.wise_alphas and not train_config.pretrained:
        stage.log.info("evaluate %s: no WiSE-FT: it mixes the fine-tuned weights with the "
                       "pretrained start's, and this run started from scratch", name)
    elif config.wise_alphas:
        report["wise_ft"] = wise_ft(model, train_config, class_names, splits,
                                    config.wise_alphas, config.batch_size, meta)
        held_out = "test" if "test" in splits else "val"
        alpha = max(report["wise_ft"], key=lambda a: report["wise_ft"][a]["val"])
        metrics |= {"wise_alpha": float(alpha),
                    f"wise_{held_out}_acc": report["wise_ft"][alpha][held_out]}
    out = metrics_dir / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({name: metrics}, indent=2) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("actual", "predicted"))
        writer.writerows((class_names[a], class_names[p])
                         for a, p in zip(shown[1], shown[2], strict=True))
    for split, split_scores in scores.items():
        stage.log.info("evaluate %s on %s: accuracy %.3f, macro-F1 %.3f%s", name, split,
                       split_scores["accuracy"], split_scores["macro_f1"],
                       f", top-5 {split_scores['top5_accuracy']:.3f}"
                       if "top5_accuracy" in split_scores else "")
    return metrics


def headline(scores: dict[str, dict]) -> dict:
    """The numbers compared across experiments: val accuracy (the study's figure), and on the
    held-out split (test, else val) accuracy, macro-F1 and top-5."""
    held_out = "test" if "test" in scores else "val"
    short = {"accuracy": "acc", "macro_f1": "f1", "top5_accuracy": "top5"}
    return {"val_acc": scores["val"]["accuracy"],
            **{f"{held_out}_{short[key]}": value for key, value in scores[held_out].items()}}
