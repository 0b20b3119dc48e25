"""What users still tripped on: a mistyped label that became a class of its own, per-class
figures of a class a split never saw, a summary edited against its arrays, labels out of
range, a CSV's temporary copy named instead of the user's file, a checkpoint that holds code,
two direct runs of one stage at once, invalid params before any work."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from harclip.data.cache import CacheItem, load_split, write_cache
from harclip.data.layout import CLASS_NAMES, read_labels_csv, write_labels_csv
from harclip.download.stage import download
from harclip.evaluate.metrics import classification_metrics
from harclip.evaluate.stage import evaluate
from harclip.model.checkpoints import load_checkpoint, save_checkpoint
from harclip.model.classifier import build_model
from harclip.preprocess.stage import preprocess
from harclip.runtime import files
from harclip.runtime.errors import StageError
from tests.support import REPO_ROOT
from tests.support.images import jpeg_bytes, raw_folder, rejections
from tests.support.params import download_config, evaluate_config, preprocess_config, train_config


def _folder_with_a_typo(root: Path, per_class: int = 20) -> Path:
    """A class-per-row folder of 3 classes and one row whose label is mistyped."""
    rows = raw_folder(root, per_class=per_class)
    (root / "classes.json").unlink()  # classes come from the data
    (root / "train" / "typo.jpg").write_bytes(jpeg_bytes(999))
    write_labels_csv(root / "Training_set.csv", [*rows, ("typo.jpg", "zzz_typo")])
    return root


def _cache(root: Path, train_labels, test_labels) -> Path:
    rng = np.random.default_rng(0)
    labels = [*train_labels, 0, 1, *test_labels]
    items = [CacheItem(f"f{i}", int(label), f"h{i}",
                       rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
             for i, label in enumerate(labels)]
    split_of = np.array([0] * len(train_labels) + [1, 1] + [2] * len(test_labels))
    write_cache(root, items, split_of, ["a", "b"], 8)
    return root


class Payload:
    """What a malicious checkpoint pickles: an object whose unpickling runs code."""

    def __reduce__(self):
        return (print, ("pickle ran code",))


def test_a_stage_with_invalid_params_fails_before_writing_anything(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["preprocess"]["max_bad_fraction"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "raw"
    result = subprocess.run([sys.executable, "-m", "harclip.download", "--params",
                             str(tmp_path / "params.yaml"), "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "preprocess.max_bad_fraction = 2" in result.stderr
    assert not out.exists()


def test_a_mistyped_label_is_flagged_and_its_class_left_out(tmp_path, caplog):
    source = _folder_with_a_typo(tmp_path / "mine")
    with caplog.at_level("WARNING", logger="harclip"):
        download(download_config(source="folder", path=str(source)), tmp_path / "raw")
    flagged = [r.getMessage() for r in caplog.records if "zzz_typo" in r.getMessage()]
    assert len(flagged) == 1  # the download stage says so, naming the class, its row, the fix
    assert "has 1 image(s) (line 62: typo.jpg), against a median of 20" in flagged[0]
    assert "download.classes" in flagged[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="harclip"):
        summary = preprocess(preprocess_config(image_size=16, workers=1), tmp_path / "raw",
                             tmp_path / "cache")
    assert any("'zzz_typo' has 1 image(s)" in r.getMessage() for r in caplog.records)
    assert summary["classes"] == 3  # trained on the 3 real classes only
    assert json.loads((tmp_path / "cache" / "classes.json").read_text()) == \
        list(CLASS_NAMES[:3])
    assert rejections(tmp_path / "cache", "kind") == {"typo.jpg": "rare_class"}
    assert "fewer than preprocess.min_images_per_class = 6" in \
        rejections(tmp_path / "cache")["typo.jpg"]


def test_the_default_minimum_puts_one_image_in_each_split():
    assert preprocess_config().fewest_images_per_class == 6  # 10 % of 6 rounds to 1
    assert preprocess_config(test_fraction=0.0).fewest_images_per_class == 3
    assert preprocess_config(min_images_per_class=1).fewest_images_per_class == 1


def test_a_class_a_split_never_saw_has_no_per_class_figure():
    """With min_images_per_class: 1 a one-image class lands in train alone: on test it has
    no accuracy (None, not 0.0) and the macro-F1 averages the classes test holds."""
    labels = np.array([0, 0, 1, 1])
    logits = np.eye(3)[[0, 0, 1, 2]] * 5.0  # the last image predicted as the absent class 2
    metrics, per_class = classification_metrics(labels, logits, ["a", "b", "c"])
    assert per_class == {"a": 1.0, "b": 0.5, "c": None}
    assert metrics["macro_f1"] == pytest.approx((1.0 + 2 / 3) / 2)  # over a and b only


def test_a_summary_edited_against_its_arrays_is_an_error(tmp_path):
    cache = _cache(tmp_path / "cache", [0, 1], [0, 1, 1])
    summary = json.loads((cache / "summary.json").read_text())
    (cache / "summary.json").write_text(json.dumps({**summary, "test_images": 0}))
    with pytest.raises(StageError, match=r"test_images.npy: \(3, 3, 8, 8\) uint8 images and 3 "
                                         r"labels, where summary.json says 0 images"):
        load_split(cache, "test")


@pytest.mark.parametrize(("split", "bad"), [("test", -1), ("train", -1), ("train", 99)])
def test_labels_out_of_range_are_an_error_naming_the_file(tmp_path, split, bad):
    cache = _cache(tmp_path / "cache", [0, 1], [0, 1])
    path = cache / f"{split}_labels.npy"
    labels = np.load(path)
    labels[0] = bad
    np.save(path, labels)
    with pytest.raises(StageError, match=rf"{split}_labels.npy: labels must be integers from 0 "
                                         rf"to 1 \(2 classes in classes.json\), found {bad}"):
        load_split(cache, split)


def test_a_non_utf8_csv_names_the_users_file_not_a_temporary_copy(tmp_path):
    source = tmp_path / "mine"
    raw_folder(source)
    (source / "Training_set.csv").write_bytes("filename,label\nx.jpg,caf\xe9\n".encode("latin-1"))
    (source / "classes.json").unlink()
    result = subprocess.run(
        [sys.executable, "-c", "from dataclasses import replace; from harclip.runtime import "
         "harness; from harclip.download.stage import download; from harclip.config.params "
         f"import load_params; shipped = load_params({str(REPO_ROOT / 'params.yaml')!r}); "
         "harness.run(lambda: download(replace(shipped.download, source='folder', "
         f"path={str(source)!r})))"],
        cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {source / 'Training_set.csv'}: not UTF-8 text" in result.stderr
    assert not [p for p in (tmp_path / "data").glob(".raw.*") if p.is_dir()]  # no staging


def test_a_checkpoint_that_holds_code_is_refused_in_one_line(tmp_path):
    torch.save({"format": "harclip-classifier", "state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(StageError) as raised:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / 'evil.pt'}: not a harclip checkpoint: it holds "
                              "Python objects (code)")
    assert "\n" not in message and "will likely succeed" not in message
    (tmp_path / "fake.pt").write_bytes(pickle.dumps({"format": "harclip-classifier"}))
    with pytest.raises(StageError, match=r"fake.pt: not a readable harclip checkpoint: torch's "
                                         r"data-only loader refuses it; harclip never "
                                         r"unpickles: do not load it with pickle"):
        load_checkpoint(tmp_path / "fake.pt")


@pytest.mark.parametrize("module", ["download", "preprocess"])
def test_a_second_direct_run_of_a_stage_is_refused_naming_the_holder(tmp_path, module):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["download"]["synthetic"].update(images_per_class=2, shifted_images_per_class=0,
                                           image_size=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    output = tmp_path / "data" / ("raw" if module == "download" else "cache")
    with files.output_lock(output, "the first run"):  # a live run holds the output
        result = subprocess.run([sys.executable, "-m", f"harclip.{module}"], cwd=tmp_path,
                                capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{module} is already running (pid " in result.stderr
    assert not output.exists()  # nothing deleted, nothing half-written


def test_evaluate_leaves_a_split_a_class_never_reached_unscored(tmp_path, small_cache):
    """Through the stage's own function: per-class test figures of a class absent from test
    are null in report.json, which says how many classes each macro average covers."""
    cache = tmp_path / "cache"
    images, labels = load_split(small_cache, "test")
    keep = labels != 14  # no test image of the last class
    items = [CacheItem(f"{s}{i}", int(lab), f"{s}{i}", img) for s, (imgs, labs) in
             (("v", load_split(small_cache, "val")), ("t", (images[keep], labels[keep])))
             for i, (img, lab) in enumerate(zip(imgs, labs, strict=True))]
    split_of = np.array([1] * len(load_split(small_cache, "val")[1]) + [2] * int(keep.sum()))
    write_cache(cache, items, split_of, list(CLASS_NAMES), 64)
    config = train_config(head_init="random")
    model, _ = build_model(config)
    save_checkpoint(tmp_path / "models" / "clip.pt", model, "harclip-tiny-clip", CLASS_NAMES,
                    {"params": asdict(config), "epoch": 1, "val_acc": 0.0})
    evaluate("clip", evaluate_config(device="cpu", wise_alphas=()), cache, tmp_path / "models",
             tmp_path / "metrics")
    report = json.loads((tmp_path / "metrics" / "clip" / "report.json").read_text())
    assert report["per_class_accuracy"]["test"]["using_laptop"] is None
    assert report["per_class_accuracy"]["val"]["using_laptop"] is not None
    assert report["classes_scored"] == {"val": 15, "test": 14}


def test_read_labels_csv_names_the_file_it_is_shown_as(tmp_path):
    (tmp_path / "copy.csv").write_text("name,class\n")
    with pytest.raises(StageError, match="mine/Training_set.csv: expected a header"):
        read_labels_csv(tmp_path / "copy.csv", shown_as="mine/Training_set.csv")
