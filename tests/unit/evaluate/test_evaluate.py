"""The evaluate stage: metrics that agree with scikit-learn on val and test, the checkpoint's
saved preprocessing, the zero-shot start on its tag's normalisation, WiSE-FT's curve, and a
missing checkpoint named with the stage that makes it."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from harclip.config.schema import CorruptionsConfig
from harclip.data.cache import CacheItem, load_split, write_cache
from harclip.data.layout import CLASS_NAMES
from harclip.evaluate import baselines
from harclip.evaluate import stage as evaluate_stage
from harclip.evaluate.baselines import logits_of
from harclip.evaluate.metrics import classification_metrics
from harclip.evaluate.stage import evaluate
from harclip.model.backbones import create_backbone, preprocessing_of
from harclip.model.calibration import fit_temperature
from harclip.model.checkpoints import load_checkpoint, save_checkpoint
from harclip.model.classifier import build_model
from harclip.model.feed import CachedSplit
from harclip.model.scoring import split_logits
from harclip.model.views import DeviceAugment
from harclip.runtime.errors import StageError
from harclip.train import stage as train_stage
from tests.support.params import evaluate_config, train_config


def _cache(root, n_val=30, n_test=20, size=32):
    rng = np.random.default_rng(0)
    items = [CacheItem(f"{i}.jpg", i % 15, f"h{i}",
                       rng.integers(0, 256, (3, size, size), dtype=np.uint8))
             for i in range(10 + n_val + n_test)]
    split_of = np.array([0] * 10 + [1] * n_val + [2] * n_test)
    write_cache(root, items, split_of, list(CLASS_NAMES), size)


def _checkpoint(models, name, pretrained=None):
    torch.manual_seed(0)
    config = train_config(pretrained=pretrained, head_init="text")
    model, _ = build_model(config)
    save_checkpoint(models / f"{name}.pt", model, config.model, CLASS_NAMES,
                    {"params": asdict(config), "epoch": 2, "val_acc": 0.5})


SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


CPU = torch.device("cpu")


def test_classification_metrics_match_a_hand_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 15, 200)
    logits = rng.normal(size=(200, 15))
    logits[np.arange(100), labels[:100]] += 5  # half of them right
    metrics, per_class = classification_metrics(labels, logits, list(CLASS_NAMES))
    predicted = logits.argmax(1)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    hits = [label in best for label, best in zip(labels, top5, strict=True)]
    assert metrics["top5_accuracy"] == pytest.approx(np.mean(hits))
    for index, name in enumerate(CLASS_NAMES):
        mine = labels == index
        assert per_class[name] == pytest.approx(
            np.mean(predicted[mine] == index) if mine.any() else 0.0)
    few, _ = classification_metrics(labels % 4, logits[:, :4], ["a", "b", "c", "d"])
    assert "top5_accuracy" not in few  # with 5 classes or fewer it would always be 1


def test_evaluate_scores_val_and_test_and_agrees_with_sklearn(tmp_path):
    _cache(tmp_path / "cache")
    weights = tmp_path / "backbone.pt"
    torch.save(create_backbone("harclip-tiny-clip", None).state_dict(), weights)
    _checkpoint(tmp_path / "models", "clip", pretrained=str(weights))
    corruptions = CorruptionsConfig(names=("jpeg", "gaussian_blur"), severities=(1, 5), seed=0)
    metrics = evaluate("clip", evaluate_config(batch_size=7, wise_alphas=(),
                                               corruptions=corruptions),
                       tmp_path / "cache", tmp_path / "models", tmp_path / "metrics")
    out = tmp_path / "metrics" / "clip"
    saved = json.loads((out / "eval.json").read_text())
    assert saved == {"clip": json.loads(json.dumps(metrics))}  # under the model's name
    assert set(metrics) == {"val_acc", "test_acc", "test_f1", "test_top5", "test_ece",
                            "corrupt_acc"}
    assert all(isinstance(v, float) for v in metrics.values())  # numbers only
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    actual = [r["actual"] for r in rows]
    predicted = [r["predicted"] for r in rows]
    assert len(rows) == 20  # the confusion matrix is on the test split
    assert metrics["test_acc"] == pytest.approx(accuracy_score(actual, predicted))
    assert metrics["test_f1"] == pytest.approx(
        f1_score(actual, predicted, labels=list(CLASS_NAMES), average="macro", zero_division=0))
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == {"val": 30, "test": 20} and report["checkpoint_epoch"] == 2
    assert report["corruptions_split"] == "test"  # the test split, each corruption × severity
    assert {name: list(by_severity) for name, by_severity in report["corruptions"].items()} \
        == {"jpeg": ["1", "5"], "gaussian_blur": ["1", "5"]}
    assert metrics["corrupt_acc"] == pytest.approx(np.mean(
        [a for by_severity in report["corruptions"].values() for a in by_severity.values()]))
    assert report["classes"] == list(CLASS_NAMES) and report["predictions_split"] == "test"
    assert set(report["per_class_accuracy"]["test"]) == set(CLASS_NAMES)
    assert report["scores"]["val"]["accuracy"] == metrics["val_acc"]
    # The checkpoint's head was initialised from text and never trained, so the untouched
    # backbone's zero-shot accuracy is the same number.
    for split in ("val", "test"):
        assert report["zero_shot_accuracy"][split] == pytest.approx(metrics[f"{split}_acc"])
    # Calibration on test. The checkpoint records no temperature (as one saved before they
    # were), so its probabilities are scored as predict gives them: T = 1. The zero-shot
    # start, the same logits, gets its own temperature, fitted on val.
    calibration, zero_shot = report["calibration"], report["zero_shot_calibration"]
    assert calibration["split"] == zero_shot["split"] == "test"
    assert metrics["test_ece"] == calibration["ece_after"] == calibration["ece_before"]
    assert calibration["temperature"] == 1.0 and zero_shot["ece_before"] == pytest.approx(
        calibration["ece_before"], rel=1e-9)
    model, meta = load_checkpoint(tmp_path / "models" / "clip.pt")
    val = CachedSplit(*load_split(tmp_path / "cache", "val"), CPU)
    assert zero_shot["temperature"] == pytest.approx(fit_temperature(
        torch.from_numpy(logits_of(model, val, 7, meta)), val.labels), rel=1e-4)
    assert sum(calibration["reliability"]["after"]["images"]) == 20
    inference = report["inference"]
    assert re.fullmatch(r"\d+ CPU cores \(.+\)", inference["device"])  # the hardware named
    assert inference["batch_size"] == 7 and inference["img_s"] > 0
    assert 0 < inference["latency_ms_p50"] <= inference["latency_ms_p95"]


def test_evaluate_scores_the_probabilities_with_the_checkpoints_temperature(tmp_path):
    """What predict reports: softmax(logits / T) with the T training stored, not a new one."""
    _cache(tmp_path / "cache")
    _checkpoint(tmp_path / "models", "clip")
    path = tmp_path / "models" / "clip.pt"
    torch.save({**torch.load(path, weights_only=True), "temperature": 2.5}, path)
    metrics = evaluate("clip", evaluate_config(wise_alphas=()), tmp_path / "cache",
                       tmp_path / "models", tmp_path / "metrics")
    calibration = json.loads((tmp_path / "metrics" / "clip" / "report.json").read_text())[
        "calibration"]
    assert calibration["temperature"] == 2.5 and metrics["test_ece"] == calibration["ece_after"]
    assert calibration["nll_after"] != calibration["nll_before"]


def test_without_a_test_split_evaluate_reports_val_alone(tmp_path):
    _cache(tmp_path / "cache", n_test=0)
    _checkpoint(tmp_path / "models", "clip")
    metrics = evaluate("clip", evaluate_config(wise_alphas=()), tmp_path / "cache",
                       tmp_path / "models", tmp_path / "metrics")
    assert set(metrics) == {"val_acc", "val_f1", "val_top5", "val_ece", "corrupt_acc"}
    report = json.loads((tmp_path / "metrics" / "clip" / "report.json").read_text())
    assert report["predictions_split"] == report["calibration"]["split"] == \
        report["corruptions_split"] == "val"


def test_evaluate_without_a_checkpoint_names_it_and_the_stage_that_makes_it(tmp_path):
    _cache(tmp_path / "cache")
    with pytest.raises(StageError, match=r"models/sglip.pt: checkpoint not found; the "
                                         r"train_sglip stage makes it"):
        evaluate("sglip", evaluate_config(wise_alphas=()), tmp_path / "cache", tmp_path / "models",
                 tmp_path / "metrics")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sglip.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StageError, match="sglip.pt: not a readable harclip checkpoint"):
        evaluate("sglip", evaluate_config(wise_alphas=()), tmp_path / "cache", tmp_path / "models",
                 tmp_path / "metrics")


def test_a_checkpoint_whose_training_params_lack_a_key_says_to_retrain_it(tmp_path):
    """Its zero-shot start is rebuilt from the params it records; those of an older harclip
    (without `tune`, say) are not guessed at."""
    _cache(tmp_path / "cache")
    _checkpoint(tmp_path / "models", "clip")
    path = tmp_path / "models" / "clip.pt"
    payload = torch.load(path, weights_only=True)
    del payload["params"]["tune"]
    torch.save(payload, path)
    with pytest.raises(StageError, match=r"clip.pt: its training params do not fit this "
                                         r"harclip \(1 key\(s\), e.g. tune\); retrain it"):
        evaluate("clip", evaluate_config(wise_alphas=()), tmp_path / "cache",
                 tmp_path / "models", tmp_path / "metrics")


def test_wise_ft_runs_from_the_zero_shot_model_to_the_fine_tuned_one(small_cache, tmp_path):
    torch.manual_seed(3)
    start = tmp_path / "start.pt"
    torch.save(create_backbone("harclip-tiny-clip", None).state_dict(), start)
    config = train_config(pretrained=str(start), head_init="text", epochs=1, batch_size=64,
                          lr=1e-3, device="cpu")
    train_stage.run("clip", config, small_cache, tmp_path / "models", tmp_path / "logs",
                    tmp_path / "resume")
    metrics = evaluate("clip", evaluate_config(device="cpu", wise_alphas=(0.0, 0.5, 1.0)),
                       small_cache, tmp_path / "models", tmp_path / "metrics")
    report = json.loads((tmp_path / "metrics" / "clip" / "report.json").read_text())
    curve = report["wise_ft"]
    assert list(curve) == ["0", "0.5", "1"]
    splits = ("val", "test", "shift")  # small_cache has a shift split: both test splits
    assert set(report["zero_shot_accuracy"]) == set(splits)
    assert curve["0"] == report["zero_shot_accuracy"]  # α = 0: the zero-shot model
    assert curve["1"] == {split: report["scores"][split]["accuracy"]  # α = 1: fine-tuned
                          for split in splits}
    chosen = max(curve, key=lambda a: curve[a]["val"])
    assert metrics["wise_alpha"] == float(chosen)
    assert metrics["wise_test_acc"] == curve[chosen]["test"]
    assert metrics["wise_shift_acc"] == curve[chosen]["shift"]  # chosen on val, scored on both
    assert report["shift"] == {
        "accuracy": metrics["shift_acc"], "zero_shot_accuracy": curve["0"]["shift"],
        "wise_alpha_best_on_shift": float(max(curve, key=lambda a: curve[a]["shift"]))}
    assert metrics["shift_acc"] == report["scores"]["shift"]["accuracy"]
    assert report["images"]["shift"] == 60 and report["predictions_split"] == "test"


def test_wise_ft_is_skipped_for_a_run_from_scratch(small_cache, tmp_path, caplog):
    train_stage.run("clip", train_config(epochs=1, batch_size=64, device="cpu"), small_cache,
                    tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    with caplog.at_level("INFO", logger="harclip"):
        metrics = evaluate("clip", evaluate_config(device="cpu", wise_alphas=(0.0, 1.0)),
                           small_cache, tmp_path / "models", tmp_path / "metrics")
    assert "wise_alpha" not in metrics
    assert any("no WiSE-FT" in r.getMessage() for r in caplog.records)


def test_evaluate_uses_the_checkpoints_saved_preprocessing(small_cache, tmp_path):
    """A checkpoint whose mean/std differ from its architecture's defaults is scored with the
    saved ones, and so are its zero-shot baseline's inputs with the tag's own."""
    torch.manual_seed(0)
    config = train_config(model="harclip-tiny-clip", prompt_templates=("a photo of a person {}.",),
                          prompt_names={})  # a random text head on which the view matters
    model, _ = build_model(config)
    saved = {"image_size": 64, "mean": [0.9, 0.1, 0.5], "std": [0.05, 0.5, 0.2]}
    save_checkpoint(tmp_path / "models" / "clip.pt", model, "harclip-tiny-clip", CLASS_NAMES,
                    {"params": asdict(config), "epoch": 1})
    payload = torch.load(tmp_path / "models" / "clip.pt", weights_only=True)
    torch.save({**payload, **saved}, tmp_path / "models" / "clip.pt")

    loaded, _ = load_checkpoint(tmp_path / "models" / "clip.pt")
    assert preprocessing_of(loaded.clip) == saved  # one source of truth, rebuilt with it
    metrics = evaluate_stage.evaluate("clip", evaluate_config(device="cpu", wise_alphas=()),
                                      small_cache, tmp_path / "models", tmp_path / "metrics")
    images, labels = load_split(small_cache, "test")  # predictions.csv is on test
    split = CachedSplit(images, labels, CPU)
    with_saved = split_logits(loaded, split, DeviceAugment.for_eval(saved), 64, None)
    default_view = DeviceAugment.for_eval(preprocessing_of(model.clip))
    with_defaults = split_logits(loaded, split, default_view, 64, None)
    assert not torch.equal(with_saved.argmax(1), with_defaults.argmax(1))  # it matters here
    with open(tmp_path / "metrics" / "clip" / "predictions.csv") as handle:
        written = [CLASS_NAMES.index(row["predicted"]) for row in csv.DictReader(handle)]
    assert written == with_saved.argmax(1).tolist()
    assert metrics["test_acc"] == pytest.approx(
        (with_saved.argmax(1).numpy() == labels).mean())


def test_zero_shot_baseline_uses_the_pretrained_tags_normalisation(fake_tag, small_cache,
                                                                   monkeypatch):
    seen = []
    original = DeviceAugment.for_eval
    monkeypatch.setattr(DeviceAugment, "for_eval",
                        classmethod(lambda cls, p: seen.append(p) or original(p)))
    images, labels = load_split(small_cache, "val")
    config = train_config(model="harclip-tiny-siglip", pretrained="webli")
    accuracy, _ = baselines.zero_shot_scores(config, list(CLASS_NAMES),
                                             {"val": CachedSplit(images, labels, CPU)}, 64)
    assert 0.0 <= accuracy["val"] <= 1.0
    assert [p["mean"] for p in seen] == [list(SIGLIP_MEAN)]


def test_a_checkpoint_from_before_newer_keys_still_gives_its_training_params(tmp_path):
    """Keys added after a checkpoint was written (cache_in_memory, shots_per_class) read as
    what was in effect before them: no retraining asked for."""
    params = asdict(train_config(lr=1e-4))
    del params["cache_in_memory"], params["shots_per_class"]
    config = evaluate_stage.trained_with({"params": params}, tmp_path / "clip.pt")
    assert config.lr == 1e-4 and config.cache_in_memory == "auto"
    assert config.shots_per_class is None  # the whole training split
    params.pop("lr")  # a key that does shape them is still required
    with pytest.raises(StageError, match="retrain it"):
        evaluate_stage.trained_with({"params": params}, tmp_path / "clip.pt")
