"""The evaluate stage's work: score one model's chosen checkpoint on the val and test splits.

Training picked the checkpoint's epoch on val, as the original study did, so the val figure
compares with the study's table; the test split, which no training step and no model selection
ever read, gives the honest figure. Uses all tokens, the deterministic view and the
checkpoint's own preprocessing (input size, mean, std).

Writes metrics/<name>/eval.json (the few numbers `dvc metrics diff` and `dvc exp show`
compare, under the model's name: val accuracy, and test accuracy, macro-F1, top-5 accuracy
and calibration error after the checkpoint's temperature; on val without a test split),
metrics/<name>/report.json (every score per split, per-class accuracy, class names, image
counts, calibration before and after the temperature with the reliability diagram's bins,
inference cost on this device, the untouched pretrained backbone's zero-shot accuracy and
calibration, the epoch-0 baseline, the held-out split's accuracy under each common
corruption and severity, whose mean eval.json gives as corrupt_acc, and where the cache has a
shift split, its accuracy, the zero-shot start's and each WiSE-FT mixture's) and
metrics/<name>/predictions.csv (actual and predicted class per test image, or per val image
without a test split: DVC's confusion plots read it).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from harclip.config.schema import EvaluateConfig, TrainConfig
from harclip.data.cache import CACHE_DIR, load_split
from harclip.data.layout import SHIFT_SPLIT, held_out_split
from harclip.evaluate.baselines import wise_ft, zero_shot_scores
from harclip.evaluate.corruptions import corruption_scores
from harclip.evaluate.inference import inference_cost, timed_logits, warm_up
from harclip.evaluate.metrics import classification_metrics, headline_metrics
from harclip.model.calibration import calibration_report
from harclip.model.checkpoints import load_checkpoint
from harclip.model.feed import CachedSplit
from harclip.model.views import DeviceAugment
from harclip.runtime.devices import autocast_dtype, resolve_device
from harclip.runtime.errors import StageError
from harclip.runtime.log import log


def evaluate(name: str, config: EvaluateConfig, cache_dir: Path = CACHE_DIR,
             models_dir: Path = Path("models"), metrics_dir: Path = Path("metrics")) -> dict:
    """Evaluate models/<name>.pt on val, test and shift (those the cache has); write
    eval.json, report.json and predictions.csv; return the metrics."""
    checkpoint = models_dir / f"{name}.pt"
    if not checkpoint.is_file():
        raise StageError(f"{checkpoint}: checkpoint not found; the train_{name} stage "
                         f"makes it (`dvc repro train_{name}`)")
    model, meta = load_checkpoint(checkpoint)
    device = resolve_device(config.device)
    model.to(device)
    class_names = meta["class_names"]
    splits = {split: CachedSplit(*load_split(cache_dir, split), device)
              for split in ("val", "test", SHIFT_SPLIT)}
    splits = {split: data for split, data in splits.items() if len(data)}
    scores, report = {}, {"model": meta["model"], "checkpoint_epoch": meta["epoch"],
                          "classes": class_names, "images": {}, "per_class_accuracy": {},
                          "classes_scored": {}}
    view, dtype = DeviceAugment.for_eval(meta), autocast_dtype("auto", device)  # one view:
    # its mean and std go to the device once, in the warm-up or the val pass, not in a timed one
    started = time.perf_counter()
    if "test" not in splits:  # the val pass is the timed one (else val warms up for test)
        warm_up(model, splits["val"], view, config.batch_size, dtype)
    timing_s = time.perf_counter() - started
    logits_by_split, seconds = {}, {}
    for split, data in splits.items():
        labels = data.labels.cpu().numpy()
        if labels.max(initial=0) >= len(class_names):
            raise StageError(f"{cache_dir}: labels up to {labels.max()} but {checkpoint} "
                             f"knows {len(class_names)} classes; retrain on this cache")
        logits, seconds[split] = timed_logits(model, data, view, config.batch_size, dtype)
        logits_by_split[split] = logits
        scores[split], report["per_class_accuracy"][split] = \
            classification_metrics(labels, logits, class_names)
        report["images"][split] = len(labels)
        report["classes_scored"][split] = len(set(labels.tolist()))
    held_out = held_out_split(splits)
    shown = (held_out, splits[held_out].labels.cpu().numpy(),
             logits_by_split[held_out].argmax(axis=1))
    train_config = trained_with(meta, checkpoint)
    report.update(pretrained=train_config.pretrained, scores=scores, predictions_split=held_out)
    started = time.perf_counter()
    report["calibration"] = calibration(logits_by_split, splits, meta, name)
    calibration_s = time.perf_counter() - started
    if config.zero_shot and train_config.pretrained:
        report["zero_shot_accuracy"], report["zero_shot_calibration"] = zero_shot_scores(
            train_config, class_names, splits, config.batch_size)
    if SHIFT_SPLIT in scores:
        report["shift"] = {"accuracy": scores[SHIFT_SPLIT]["accuracy"],
                           "zero_shot_accuracy": report.get("zero_shot_accuracy", {})
                           .get(SHIFT_SPLIT)}
    started = time.perf_counter()
    report["inference"] = inference_cost(model, splits[held_out], seconds[held_out], view,
                                         config.batch_size, dtype,
                                         report["calibration"]["temperature"])
    timing_s += time.perf_counter() - started
    log.info("evaluate %s: calibration %.2f s, inference timing %.2f s (the latency; the "
             "throughput is the %s pass's own)", name, calibration_s, timing_s, held_out)
    metrics = headline_metrics(scores) | {f"{held_out}_ece": report["calibration"]["ece_after"]}
    if SHIFT_SPLIT in scores:
        metrics["shift_acc"] = scores[SHIFT_SPLIT]["accuracy"]
    if config.corruptions.names and config.corruptions.severities:
        started = time.perf_counter()
        report["corruptions"] = corruption_scores(
            model, *load_split(cache_dir, held_out), view, config.corruptions,
            config.batch_size, dtype, device, name)
        report["corruptions_split"] = held_out
        metrics["corrupt_acc"] = round(float(np.mean([
            accuracy for by_severity in report["corruptions"].values()
            for accuracy in by_severity.values()])), 6)
        log.info("evaluate %s: %s under %d corruptions × %d severities in %.1f s, mean "
                 "accuracy %.3f", name, held_out, len(config.corruptions.names),
                 len(config.corruptions.severities), time.perf_counter() - started,
                 metrics["corrupt_acc"])
    if config.wise_alphas and not train_config.pretrained:
        log.info("evaluate %s: no WiSE-FT: it mixes the fine-tuned weights with the "
                 "pretrained start's, and this run started from scratch", name)
    elif config.wise_alphas:
        curve = report["wise_ft"] = wise_ft(model, train_config, class_names, splits,
                                            config.wise_alphas, config.batch_size, meta)
        alpha = max(curve, key=lambda a: curve[a]["val"])
        metrics |= {"wise_alpha": float(alpha),
                    f"wise_{held_out}_acc": curve[alpha][held_out]}
        if SHIFT_SPLIT in splits:  # the α that would have been best on the shift: reported,
            # never chosen by (choosing on the shift would make it one more val split)
            metrics["wise_shift_acc"] = curve[alpha][SHIFT_SPLIT]
            report["shift"]["wise_alpha_best_on_shift"] = float(
                max(curve, key=lambda a: curve[a][SHIFT_SPLIT]))
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
        log.info("evaluate %s on %s: accuracy %.3f, macro-F1 %.3f%s", name, split,
                 split_scores["accuracy"], split_scores["macro_f1"],
                 f", top-5 {split_scores['top5_accuracy']:.3f}"
                 if "top5_accuracy" in split_scores else "")
    return metrics


def calibration(logits: dict[str, np.ndarray], splits: dict[str, CachedSplit], meta: dict,
                name: str) -> dict:
    """report.json's `calibration`: ECE, NLL and the reliability diagram's bins on the held-out
    split (test, else val, on which the temperature was fitted) before and after the
    checkpoint's temperature, which training fitted on val: what predict reports. A
    checkpoint saved before temperatures were has none, and predict's probabilities are
    uncalibrated (T = 1)."""
    temperature = meta.get("temperature")
    if temperature is None:
        log.info("evaluate %s: the checkpoint records no temperature (saved before they "
                 "were): its probabilities are scored as predict gives them, uncalibrated",
                 name)
        temperature = 1.0
    held_out = held_out_split(splits)
    return {"split": held_out, **calibration_report(torch.from_numpy(logits[held_out]),
                                                    splits[held_out].labels.cpu(), temperature)}


BEFORE_THEM = {"cache_in_memory": "auto", "shots_per_class": None}
"""Training keys newer than some checkpoints, with the value in effect before them (every
image in memory, the whole training split): a checkpoint written before them reads so."""


def trained_with(meta: dict, checkpoint: Path) -> TrainConfig:
    """The training params a checkpoint records (A-CLIP's masking left aside): what its
    zero-shot start and WiSE-FT are rebuilt from."""
    recorded = {**BEFORE_THEM, **meta["params"]}
    try:
        return TrainConfig(**{key: value for key, value in recorded.items()
                              if key in TrainConfig.__dataclass_fields__})
    except ValidationError as err:
        raise StageError(f"{checkpoint}: its training params do not fit this harclip "
                         f"({err.error_count()} key(s), e.g. "
                         f"{'.'.join(map(str, err.errors()[0]['loc']))}); retrain it with "
                         f"`dvc repro`") from None
