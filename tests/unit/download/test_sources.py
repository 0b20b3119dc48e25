"""The download stage's sources: a Hugging Face parquet, the Kaggle zip, a folder per class,
the synthetic stand-in, all into the Kaggle layout with their classes from the data; offline
sources that fail say what to do."""

from __future__ import annotations

import json
import zipfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harclip.data.cache import cache_classes
from harclip.data.layout import CLASS_NAMES, read_labels_csv
from harclip.download import stage as dl
from harclip.download.sources import write_synthetic
from harclip.preprocess.stage import preprocess
from harclip.runtime.errors import StageError
from tests.support import HAR_SAMPLE
from tests.support.images import class_folders, jpeg_bytes, kaggle_folder, rejections
from tests.support.params import download_config, preprocess_config, synthetic_config

FRUIT = ["apple", "banana", "cherry", "date", "elderberry"]


def _classes_json(raw):
    return json.loads((raw / "classes.json").read_text())


def _hf_parquet(path, features: dict, columns: dict):
    images = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [pa.field(name, images if name == "img" else pa.int64()) for name in columns]
    schema = pa.schema(fields, metadata={"huggingface": json.dumps(
        {"info": {"features": features}})})
    pq.write_table(pa.table(columns, schema=schema), path)


HF_SCHEMA = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                       ("labels", pa.int64())])


def _write_hf_parquet(path, labels, seed=0):
    images = [{"bytes": jpeg_bytes(seed + i), "path": f"Image_{i}.jpg"}
              for i in range(len(labels))]
    pq.write_table(pa.table({"image": images, "labels": labels}, schema=HF_SCHEMA), path)
    return images


def _write_kaggle_zip(path, labels):
    top = "Human Action Recognition"
    with zipfile.ZipFile(path, "w") as archive:
        lines = ["filename,label"] + [f"Image_{i}.jpg,{lab}" for i, lab in enumerate(labels)]
        archive.writestr(f"{top}/Training_set.csv", "\n".join(lines) + "\n")
        archive.writestr(f"{top}/Testing_set.csv", "filename\nImage_900.jpg\n")
        for i in range(len(labels)):
            archive.writestr(f"{top}/train/Image_{i}.jpg", jpeg_bytes(i))
        archive.writestr(f"{top}/test/Image_900.jpg", jpeg_bytes(900))
        archive.writestr("../escape.jpg", b"not allowed out")


def test_class_per_folder_and_csv_sets_take_their_classes_from_the_data(tmp_path):
    class_folders(tmp_path / "folders", list(reversed(FRUIT)))
    dl.download(download_config(source="folder", path=str(tmp_path / "folders")),
                tmp_path / "raw1")
    assert _classes_json(tmp_path / "raw1") == FRUIT  # sorted: no order of their own
    kaggle_folder(tmp_path / "kaggle", FRUIT[:2])
    dl.download(download_config(source="folder", path=str(tmp_path / "kaggle")),
                tmp_path / "raw2")
    assert _classes_json(tmp_path / "raw2") == FRUIT[:2]
    preprocess(preprocess_config(image_size=16, workers=1, val_fraction=0.34,
                                 test_fraction=0.0), tmp_path / "raw2", tmp_path / "cache")
    assert cache_classes(tmp_path / "cache") == FRUIT[:2]


def test_pinned_classes_set_the_order_and_report_an_unlisted_label(tmp_path):
    class_folders(tmp_path / "folders", FRUIT, per_class=4)
    pinned = ("elderberry", "apple", "banana", "cherry")  # no "date"
    dl.download(download_config(source="folder", path=str(tmp_path / "folders"),
                                classes=pinned), tmp_path / "raw")
    assert _classes_json(tmp_path / "raw") == list(pinned)
    preprocess(preprocess_config(image_size=16, workers=1, max_bad_fraction=0.25,
                                 min_images_per_class=1),
               tmp_path / "raw", tmp_path / "cache")
    kinds = rejections(tmp_path / "cache", "kind")
    assert set(kinds.values()) == {"unknown_label"} and len(kinds) == 4
    assert all(name.startswith("date/") for name in kinds)
    assert cache_classes(tmp_path / "cache") == list(pinned)


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
    config = download_config(source="huggingface", path=str(tmp_path / "hub"),
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
    config = download_config(source="huggingface", path=str(path), hf_repo="someone/other",
                             hf_label_column="label")
    with pytest.raises(StageError, match="without ClassLabel names.*download.classes"):
        dl.download(config, tmp_path / "raw")
    dl.download(download_config(source="huggingface", path=str(path), hf_repo="someone/other",
                                hf_label_column="label", classes=("cat", "dog")),
                tmp_path / "raw")
    assert [r.label for r in read_labels_csv(tmp_path / "raw" / "Training_set.csv")] == ["dog"]


def test_hars_own_sources_keep_the_hubs_15_classes_in_order(tmp_path):
    tiny = synthetic_config(images_per_class=2, shifted_images_per_class=0, image_size=32)
    dl.download(download_config(source="synthetic", synthetic=tiny), tmp_path / "synthetic")
    assert _classes_json(tmp_path / "synthetic") == list(CLASS_NAMES)
    hub = tmp_path / "train-00000-of-00001.parquet"  # HAR's hub copy: no features recorded
    schema = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("labels", pa.int64())])
    pq.write_table(pa.table({"image": [{"bytes": jpeg_bytes(0), "path": "a.jpg"}],
                             "labels": [14]}, schema=schema), hub)
    dl.download(download_config(source="huggingface", path=str(hub)), tmp_path / "hub")
    assert _classes_json(tmp_path / "hub") == list(CLASS_NAMES)
    if (HAR_SAMPLE / "Training_set.csv").is_file():  # the real sample, in the Kaggle layout
        dl.download(download_config(source="folder", path=str(HAR_SAMPLE)), tmp_path / "real")
        assert _classes_json(tmp_path / "real") == list(CLASS_NAMES)


def test_huggingface_parquet_in_the_hub_schema_becomes_the_kaggle_layout(tmp_path):
    source = tmp_path / "hub" / "data"
    source.mkdir(parents=True)
    images = _write_hf_parquet(source / "train-00000-of-00001.parquet", [0, 14, 3, 99])
    _write_hf_parquet(source / "test-00000-of-00001.parquet", [0, 0])  # placeholder labels
    out = tmp_path / "raw"
    count = dl.download(download_config(source="huggingface", path=str(tmp_path / "hub")), out)
    rows = read_labels_csv(out / "Training_set.csv")
    assert count == 4  # the test split was not read
    assert [row.label for row in rows] == ["calling", "using_laptop", "dancing", "label_id_99"]
    assert [(out / "train" / row.filename).read_bytes() for row in rows] == \
        [image["bytes"] for image in images]


def test_parquet_without_the_hub_columns_is_rejected_naming_the_file(tmp_path):
    pq.write_table(pa.table({"img": [b"x"], "label": [1]}), tmp_path / "train.parquet")
    with pytest.raises(StageError, match=r"train.parquet: missing column\(s\) \['image', "):
        dl.download(download_config(source="huggingface", path=str(tmp_path / "train.parquet")),
                    tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_kaggle_zip_extracts_the_labelled_train_split_only(tmp_path):
    _write_kaggle_zip(tmp_path / "har.zip", ["sitting", "texting", "cycling"])
    out = tmp_path / "raw"
    assert dl.download(download_config(source="kaggle", path=str(tmp_path / "har.zip")), out) == 3
    rows = read_labels_csv(out / "Training_set.csv")
    assert [row.label for row in rows] == ["sitting", "texting", "cycling"]
    assert sorted(p.name for p in (out / "train").iterdir()) == \
        ["Image_0.jpg", "Image_1.jpg", "Image_2.jpg"]
    assert (out / "train" / "Image_1.jpg").read_bytes() == jpeg_bytes(1)
    assert not (tmp_path / "escape.jpg").exists()


def test_class_per_folder_tree_is_labelled_by_folder_name(tmp_path):
    for label in ("eating", "hugging"):
        (tmp_path / "src" / label).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "src" / label / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    (tmp_path / "src" / "eating" / ".DS_Store").write_bytes(b"junk")
    out = tmp_path / "raw"
    assert dl.download(download_config(source="folder", path=str(tmp_path / "src")), out) == 4
    rows = read_labels_csv(out / "Training_set.csv")
    assert Counter(row.label for row in rows) == {"eating": 2, "hugging": 2}
    assert all((out / "train" / row.filename).is_file() for row in rows)


def test_real_har_sample_in_the_kaggle_layout(har_sample, tmp_path):
    out = tmp_path / "raw"
    assert dl.download(download_config(source="folder", path=str(har_sample)), out) == 3600
    rows = read_labels_csv(out / "Training_set.csv")
    assert Counter(row.label for row in rows) == {name: 240 for name in CLASS_NAMES}


def test_offline_hub_fails_clearly_and_keeps_what_was_there(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # if imported before
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    with pytest.raises(StageError) as err:
        dl.download(download_config(source="huggingface"), out)
    assert "Bingsu/Human_Action_Recognition" in str(err.value)
    assert "download.source: synthetic" in str(err.value)
    assert (out / "keep.txt").read_text() == "earlier output"
    assert [p.name for p in tmp_path.iterdir()  # no staging folder (the lock stays)
            if p.name.startswith(".raw") and p.name != ".raw.lock"] == []


def test_kaggle_without_credentials_says_how_to_go_on(tmp_path, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    with pytest.raises(StageError, match="no Kaggle credentials.*download.path"):
        dl.download(download_config(source="kaggle"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("source", ["kaggle", "folder"])
def test_missing_local_source_names_the_path(tmp_path, source):
    missing = tmp_path / "nowhere"
    with pytest.raises(StageError, match=f"{missing}: .*not found"):
        dl.download(download_config(source=source, path=str(missing)), tmp_path / "raw")


def test_corrupt_zip_is_named(tmp_path):
    (tmp_path / "har.zip").write_bytes(b"PK-but-not-really")
    with pytest.raises(StageError, match="har.zip: not a readable zip"):
        dl.download(download_config(source="kaggle", path=str(tmp_path / "har.zip")),
                    tmp_path / "raw")


def test_written_set_is_balanced_over_all_15_classes_in_the_kaggle_layout(tmp_path):
    count, classes = write_synthetic(synthetic_config(images_per_class=3, image_size=40, seed=0,
                                                      shifted_images_per_class=2), tmp_path)
    assert classes == list(CLASS_NAMES)
    rows = read_labels_csv(tmp_path / "Training_set.csv")
    assert count == len(rows) == 75
    assert Counter(row.label for row in rows) == {name: 5 for name in CLASS_NAMES}
    assert Counter(row.split for row in rows) == {"": 45, "shift": 30}  # the rest: preprocess'
    assert Counter(row.label for row in rows if row.split) == {name: 2 for name in CLASS_NAMES}
    write_synthetic(synthetic_config(images_per_class=3, image_size=40, seed=0,
                                     shifted_images_per_class=0), tmp_path / "none")
    assert (tmp_path / "none" / "Training_set.csv").read_text().startswith("filename,label\n")
    assert all((tmp_path / "train" / row.filename).read_bytes()[:2] == b"\xff\xd8"
               for row in rows)  # real JPEG files
