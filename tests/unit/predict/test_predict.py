"""predict: top-k actions per image from a checkpoint, non-images reported and skipped, the
same computation as the evaluate stage."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from harclip.data.layout import CLASS_NAMES
from harclip.model.checkpoints import load_checkpoint, save_checkpoint
from harclip.model.classifier import build_model
from harclip.predict.__main__ import render
from harclip.predict.classify import classify, image_files
from tests.support.params import train_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = train_config()
    model, _ = build_model(config)
    path = tmp_path_factory.mktemp("models") / "clip.pt"
    save_checkpoint(path, model, config.model, CLASS_NAMES,
                    {"params": asdict(config), "epoch": 1, "val_acc": 0.1})
    return path


def _images(folder, count=5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{index}.{'png' if index % 2 else 'jpg'}")
    (folder / "notes.txt").write_text("not a picture")
    return folder


def test_topk_per_image_in_batches_with_non_images_skipped(checkpoint, tmp_path):
    folder = _images(tmp_path / "photos")
    model, meta = load_checkpoint(checkpoint)
    predictions, skipped = classify(model, meta, image_files([folder]), top_k=3, batch_size=2)
    expected = ["img_0.jpg", "img_1.png", "img_2.jpg", "img_3.png", "img_4.jpg"]
    assert [p.path.rsplit("/", 1)[1] for p in predictions] == expected
    assert [(path.name, reason) for path, reason in skipped] == [("notes.txt",
                                                                  "not an image file")]
    for p in predictions:
        assert len(p.labels) == 3 and set(p.labels) <= set(CLASS_NAMES)
        assert p.probabilities == sorted(p.probabilities, reverse=True)
        assert 0 < sum(p.probabilities) <= 1.0 + 1e-6
    # Batching does not change the answer.
    one_by_one, _ = classify(model, meta, image_files([folder]), top_k=3, batch_size=1)
    assert [p.labels for p in one_by_one] == [p.labels for p in predictions]
    assert np.allclose([p.probabilities for p in one_by_one],
                       [p.probabilities for p in predictions], atol=1e-5)


def test_csv_and_json_outputs(checkpoint, tmp_path):
    folder = _images(tmp_path / "photos", count=2)
    model, meta = load_checkpoint(checkpoint)
    predictions, _ = classify(model, meta, image_files([folder]), top_k=2)
    rows = list(csv.DictReader(io.StringIO(render(predictions, "csv"))))
    assert [(r["rank"], r["label"]) for r in rows[:2]] == [("1", predictions[0].labels[0]),
                                                           ("2", predictions[0].labels[1])]
    parsed = json.loads(render(predictions, "json"))
    assert parsed[1]["path"] == predictions[1].path
    assert [x["label"] for x in parsed[1]["predictions"]] == predictions[1].labels


def test_command_line_writes_json_and_reports_skipped_files(checkpoint, tmp_path):
    folder = _images(tmp_path / "photos", count=3)
    out = tmp_path / "out.json"
    result = subprocess.run([sys.executable, "-m", "harclip.predict", "--model",
                             str(checkpoint), str(folder), "--format", "json", "--output",
                             str(out), "--top-k", "5"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "notes.txt" in result.stderr
    assert [len(item["predictions"]) for item in json.loads(out.read_text())] == [5, 5, 5]
    missing = subprocess.run([sys.executable, "-m", "harclip.predict", "--model",
                              str(checkpoint), str(tmp_path / "nowhere.jpg")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "nowhere.jpg: no such file" in missing.stderr


@pytest.mark.parametrize("given", ["empty_folder", "empty_file"])
def test_nothing_predicted_says_so_and_fails(checkpoint, tmp_path, given):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty_file").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "harclip.predict", "--model",
                             str(checkpoint), given, "--output", "out.csv"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = "nothing to predict: no files in empty_folder" if given == "empty_folder" \
        else "nothing predicted: none of the 1 file(s) given is a usable image"
    assert expected in result.stderr.splitlines()[-1], result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_real_sample_images(checkpoint, har_sample):
    files = sorted((har_sample / "train").glob("*.jpg"))[:20]
    model, meta = load_checkpoint(checkpoint)
    predictions, skipped = classify(model, meta, files, top_k=1, batch_size=8)
    assert skipped == [] and len(predictions) == 20


def test_predict_computes_as_the_evaluate_stage_does(checkpoint, tmp_path, monkeypatch):
    """The same checkpoint gives the same probabilities in `predict` and in `evaluate`, under
    the autocast a GPU would use (bf16, here on the CPU)."""
    from harclip.data.decode import decode
    from harclip.evaluate import baselines
    from harclip.model.feed import CachedSplit
    from harclip.predict import classify as prediction

    bf16 = lambda precision, device: torch.bfloat16  # noqa: E731
    monkeypatch.setattr(baselines, "autocast_dtype", bf16)
    monkeypatch.setattr(prediction, "autocast_dtype", bf16)
    files = [f for f in image_files([_images(tmp_path / "photos")]) if f.suffix != ".txt"]
    model, meta = load_checkpoint(checkpoint)
    predictions, _ = classify(model, meta, files, top_k=len(CLASS_NAMES), batch_size=8)
    arrays = np.stack([decode(f.read_bytes(), meta["image_size"], "crop") for f in files])
    split = CachedSplit(arrays, np.zeros(len(files)), torch.device("cpu"))
    logits = baselines.logits_of(model, split, 8, meta)
    expected = torch.from_numpy(logits).softmax(dim=1)
    for row, p in zip(expected, predictions, strict=True):
        by_name = dict(zip(p.labels, p.probabilities, strict=True))
        got = torch.tensor([by_name[name] for name in CLASS_NAMES])
        assert torch.allclose(got, row, atol=1e-6), (got - row).abs().max()


def test_probabilities_are_the_softmax_of_the_logits_over_the_stored_temperature(tmp_path):
    """The checkpoint's temperature calibrates what predict reports, and never changes a
    class: softmax(logits / T), T read from the file alone; the command line prints them."""
    from harclip.data.decode import decode
    from harclip.model.scoring import image_logits
    from harclip.model.views import DeviceAugment

    torch.manual_seed(0)
    config = train_config()
    model, _ = build_model(config)
    path = tmp_path / "calibrated.pt"
    save_checkpoint(path, model, config.model, CLASS_NAMES,
                    {"params": asdict(config), "epoch": 1, "val_acc": 0.1, "temperature": 2.5})
    photo = _images(tmp_path / "photos", count=1) / "img_0.jpg"
    loaded, meta = load_checkpoint(path)
    assert meta["temperature"] == 2.5
    (prediction,), _ = classify(loaded, meta, [photo], top_k=len(CLASS_NAMES))
    image = torch.from_numpy(decode(photo.read_bytes(), meta["image_size"], "crop"))[None]
    with torch.no_grad():
        logits = image_logits(loaded, image, DeviceAugment.for_eval(meta), None)[0]
    expected = (logits / 2.5).softmax(dim=0)
    got = dict(zip(prediction.labels, prediction.probabilities, strict=True))
    assert torch.allclose(torch.tensor([got[name] for name in CLASS_NAMES]), expected,
                          atol=1e-6)
    assert prediction.labels[0] == CLASS_NAMES[int(logits.argmax())]  # the same class
    assert not torch.allclose(expected, logits.softmax(dim=0), atol=1e-3)  # T matters here
    shown = subprocess.run([sys.executable, "-m", "harclip.predict", "--model", str(path),
                            str(photo), "--top-k", "1", "--format", "json"],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(shown)[0]["predictions"][0]["probability"] == pytest.approx(
        float(expected.max()), abs=1e-6)
