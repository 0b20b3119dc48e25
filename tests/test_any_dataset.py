"""Any labelled image set, not only HAR's 15 actions: classes come from the data (folders, a
CSV, a Hugging Face ClassLabel), prompts read well, CSV paths from another machine resolve,
and HAR's own sources keep the hub's class order."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from harclip import download as dl
from harclip.cache import cache_classes
from harclip.checkpoints import load_checkpoint
from harclip.config import DownloadConfig, PreprocessConfig, TrainConfig
from harclip.har import CLASS_NAMES, read_labels_csv, write_labels_csv
from harclip.models import PromptEncoder, build_model
from harclip.preprocess import preprocess
from harclip.stage import StageError
from tests.conftest import HAR_SAMPLE, jpeg_bytes
from tests.dvc_project import DvcProject, tiny_params
from tests.test_preprocess import _report

FRUIT = ["apple", "banana", "cherry", "date", "elderberry"]


def _class_folders(root, classes, per_class=3, size=(40, 30)):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(jpeg_bytes(1000 * c + i, size))


def _kaggle_folder(root, classes, per_class=3, size=(40, 30)):
    (root / "train").mkdir(parents=True)
    rows = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            filename = f"{name}_{i}.jpg"
            (root / "train" / filename).write_bytes(jpeg_bytes(1000 * c + i, size))
            rows.append((filename, name))
    write_labels_csv(root / "Training_set.csv", rows)


def _classes_json(raw):
    return json.loads((raw / "classes.json").read_text())


def test_class_per_folder_and_csv_sets_take_their_classes_from_the_data(tmp_path):
    _class_folders(tmp_path / "folders", list(reversed(FRUIT)))
    dl.download(DownloadConfig(source="folder", path=str(tmp_path / "folders")),
                tmp_path / "raw1")
    assert _classes_json(tmp_path / "raw1") == FRUIT  # sorted: no order of their own
    _kaggle_folder(tmp_path / "kaggle", FRUIT[:2])
    dl.download(DownloadConfig(source="folder", path=str(tmp_path / "kaggle")),
                tmp_path / "raw2")
    assert _classes_json(tmp_path / "raw2") == FRUIT[:2]
    preprocess(PreprocessConfig(image_size=16, workers=1, val_fraction=0.34,
                                test_fraction=0.0), tmp_path / "raw2", tmp_path / "cache")
    assert cache_classes(tmp_path / "cache") == FRUIT[:2]


def test_pinned_classes_set_the_order_and_report_an_unlisted_label(tmp_path):
    _class_folders(tmp_path / "folders", FRUIT, per_class=4)
    pinned = ("elderberry", "apple", "banana", "cherry")  # no "date"
    dl.download(DownloadConfig(source="folder", path=str(tmp_path / "folders"),
                               classes=pinned), tmp_path / "raw")
    assert _classes_json(tmp_path / "raw") == list(pinned)
    preprocess(PreprocessConfig(image_size=16, workers=1, max_bad_fraction=0.25,
                                min_images_per_class=1),
               tmp_path / "raw", tmp_path / "cache")
    kinds = _report(tmp_path / "cache", "kind")
    assert set(kinds.values()) == {"unknown_label"} and len(kinds) == 4
    assert all(name.startswith("date/") for name in kinds)
    assert cache_classes(tmp_path / "cache") == list(pinned)


def _hf_parquet(path, features: dict, columns: dict):
    images = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field(name, images if name == "img" else pa.int64()) for name in columns]
    schema = pa.schema(fields, metadata={"huggingface": json.dumps(
        {"info": {"features": features}})})
    pq.write_table(pa.table(columns, schema=schema), path)


def test_any_hugging_face_image_classification_parquet_with_its_classlabel_names(tmp_path):
    """Another dataset's schema: image column `img`, ClassLabel column `fine_label`, names in
    the features the datasets library records, the labelled split chosen by params."""
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    features = {"img": {"_type": "Image"},
                "coarse": {"dtype": "int64", "_type": "Value"},
                "fine_label": {"names": FRUIT, "_type": "ClassLabel"}}
    labels = [4, 0, 2, 2, 1]
    _hf_parquet(folder / "validation-00000-of-00001.parquet", features, {
        "img": [{"bytes": jpeg_bytes(i), "path": f"{i}.png"} for i in range(5)],
        "coarse": [0] * 5, "fine_label": labels})
    _hf_parquet(folder / "train-00000-of-00001.parquet", features, {
        "img": [{"bytes": jpeg_bytes(9), "path": "9.png"}], "coarse": [0], "fine_label": [0]})
    config = DownloadConfig(source="huggingface", path=str(tmp_path / "hub"),
                            hf_repo="someone/fruit", hf_split="validation")
    assert dl.download(config, tmp_path / "raw") == 5
    assert _classes_json(tmp_path / "raw") == FRUIT
    rows = read_labels_csv(tmp_path / "raw" / "Training_set.csv")
    assert [row.label for row in rows] == [FRUIT[i] for i in labels]
    assert (tmp_path / "raw" / "train" / rows[0].filename).read_bytes() == jpeg_bytes(0)
    assert rows[0].filename.endswith(".png")


def test_integer_labels_without_names_need_download_classes(tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    _hf_parquet(path, {"img": {"_type": "Image"}}, {
        "img": [{"bytes": jpeg_bytes(0), "path": "0.jpg"}], "label": [1]})
    config = DownloadConfig(source="huggingface", path=str(path), hf_repo="someone/other",
                            hf_label_column="label")
    with pytest.raises(StageError, match="without ClassLabel names.*download.classes"):
        dl.download(config, tmp_path / "raw")
    dl.download(DownloadConfig(source="huggingface", path=str(path), hf_repo="someone/other",
                               hf_label_column="label", classes=("cat", "dog")),
                tmp_path / "raw")
    assert [r.label for r in read_labels_csv(tmp_path / "raw" / "Training_set.csv")] == ["dog"]


def test_hars_own_sources_keep_the_hubs_15_classes_in_order(tmp_path):
    dl.download(DownloadConfig(source="synthetic", synthetic={"images_per_class": 2,
                                                               "image_size": 32}),
                tmp_path / "synthetic")
    assert _classes_json(tmp_path / "synthetic") == list(CLASS_NAMES)
    hub = tmp_path / "train-00000-of-00001.parquet"  # HAR's hub copy: no features recorded
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("labels", pa.int64())])
    pq.write_table(pa.table({"image": [{"bytes": jpeg_bytes(0), "path": "a.jpg"}],
                             "labels": [14]}, schema=schema), hub)
    dl.download(DownloadConfig(source="huggingface", path=str(hub)), tmp_path / "hub")
    assert _classes_json(tmp_path / "hub") == list(CLASS_NAMES)
    if (HAR_SAMPLE / "Training_set.csv").is_file():  # the real sample, in the Kaggle layout
        dl.download(DownloadConfig(source="folder", path=str(HAR_SAMPLE)), tmp_path / "real")
        assert _classes_json(tmp_path / "real") == list(CLASS_NAMES)


def test_csv_paths_from_another_machine_resolve_by_base_name(tmp_path, caplog):
    raw = tmp_path / "raw"
    (raw / "train" / "a").mkdir(parents=True)
    (raw / "train" / "b").mkdir()
    for i in range(8):
        (raw / "train" / f"Image_{i}.jpg").write_bytes(jpeg_bytes(i))
    (raw / "train" / "a" / "twin.jpg").write_bytes(jpeg_bytes(20))
    (raw / "train" / "b" / "twin.jpg").write_bytes(jpeg_bytes(21))
    rows = [(f"C:/Users/someone/HAR/train/Image_{i}.jpg", FRUIT[i % 2]) for i in range(4)]
    rows += [(f"/home/someone/har/train/Image_{i}.jpg", FRUIT[i % 2]) for i in range(4, 8)]
    rows += [("C:\\Users\\someone\\train\\twin.jpg", "apple"), ("a/twin.jpg", "apple"),
             ("b/twin.jpg", "banana"), ("/data/elsewhere/missing.jpg", "apple")]
    write_labels_csv(raw / "Training_set.csv", rows)
    with caplog.at_level("INFO", logger="harclip"):
        summary = preprocess(PreprocessConfig(image_size=16, workers=1, max_bad_fraction=0.3,
                                              test_fraction=0.0), raw, tmp_path / "cache")
    assert "8 absolute paths in Training_set.csv found in train/ by their base name" in \
        caplog.text
    kinds = _report(tmp_path / "cache", "kind")
    assert kinds == {"C:\\Users\\someone\\train\\twin.jpg": "ambiguous_name",
                     "/data/elsewhere/missing.jpg": "missing_file"}
    assert summary["train_images"] + summary["val_images"] == 10
    with open(tmp_path / "cache" / "manifest.csv") as handle:
        names = {row["filename"] for row in csv.DictReader(handle)}
    assert "Image_0.jpg" in names and "a/twin.jpg" in names


def test_prompts_read_class_names_as_words_or_the_given_phrase():
    seen = []
    PromptEncoder(lambda texts: seen.extend(texts) or torch.zeros(len(texts), 4, dtype=int),
                  ["using_laptop", "ice_skating"], ["a photo of a person {}."],
                  {"using_laptop": "using a laptop"})
    assert seen == ["a photo of a person using a laptop.", "a photo of a person ice skating."]
    with pytest.raises(StageError, match="prompt_names: 'juggling' not among the 5 classes"):
        build_model(TrainConfig(prompt_names={"apple": "an apple", "juggling": "juggling"}),
                    FRUIT)  # some phrases name classes: the rest are typos


def test_phrases_for_another_data_sets_classes_are_set_aside(caplog):
    """The demo's params describe HAR's 15 actions: a data set of its own classes trains on
    them unchanged, its prompts reading the class names."""
    seen = []
    tokenizer = lambda texts: seen.extend(texts) or torch.ones(len(texts), 24, dtype=int)  # noqa: E731
    with caplog.at_level("INFO", logger="harclip"):
        build_model(TrainConfig(head_init="text", prompt_templates=("{}",),
                                prompt_names={"calling": "a person holding a phone"}), FRUIT,
                    tokenizer)
    assert seen[:len(FRUIT)] == [name.replace("_", " ") for name in FRUIT]
    assert any("describe none of the 5 classes" in r.getMessage() for r in caplog.records)


def _any_data_params(source_path, classes):
    params = tiny_params()
    params["download"].update(source="folder", path=str(source_path))
    params["preprocess"].update(image_size=32, val_fraction=0.25, test_fraction=0.25)
    for section in ("train_clip", "train_sglip", "train_aclip"):
        params[section].update(epochs=1, batch_size=8, log_every=1, head_init="text")
    return params


@pytest.mark.slow
def test_a_5_and_a_40_class_set_through_the_pipeline(tmp_path):
    """Class-per-folder (5 classes) through the whole `dvc repro`, then the Kaggle layout (40
    classes) through to A-CLIP's evaluation, with tiny models: checkpoints carry the classes,
    predict prints them, `dvc status` is clean after (the confusion figure's growth with the
    classes: test_evaluate_plot)."""
    five = tmp_path / "five"
    _class_folders(five, FRUIT, per_class=4, size=(48, 40))
    forty_names = [f"action_{i:02d}" for i in range(40)]
    forty = tmp_path / "forty"
    _kaggle_folder(forty, forty_names, per_class=4, size=(48, 40))
    project = DvcProject(tmp_path / "repo", _any_data_params(five, FRUIT))
    for source, classes, targets in ((five, FRUIT, ()),
                                     (forty, forty_names, ("evaluate@aclip",))):
        project.write_params(_any_data_params(source, classes))
        project.repro(*targets)
        assert project.dvc("status", "--with-deps", *targets).strip().startswith(
            "Data and pipelines are up to date")
        methods = ("clip", "sglip", "aclip") if not targets else ("aclip",)
        for method in methods:
            _, meta = load_checkpoint(project.root / "models" / f"{method}.pt")
            assert meta["class_names"] == classes
        photo = project.root / "photo.png"
        Image.new("RGB", (40, 40), (90, 30, 200)).save(photo)
        printed = subprocess.run(
            [sys.executable, "-m", "harclip.predict", "--model", "models/aclip.pt", str(photo),
             "--top-k", "2"], cwd=project.root, env=project.env, capture_output=True,
            text=True, check=True).stdout
        assert sum(name in printed for name in classes) == 2
        report = json.loads((project.root / "metrics" / "aclip" / "report.json").read_text())
        assert report["classes"] == list(report["per_class_accuracy"]["test"]) == classes
    table = (project.root / "plots" / "confusions.md").read_text()  # the 5-class run's
    assert "most frequent confusions (test split)" in table
