import zipfile
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harclip import download as dl
from harclip.config import DownloadConfig
from harclip.har import CLASS_NAMES, read_labels_csv
from harclip.stage import StageError
from tests.conftest import jpeg_bytes

HF_SCHEMA = pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                       ("labels", pa.int64())])


def _write_hf_parquet(path, labels, seed=0):
    images = [{"bytes": jpeg_bytes(seed + i), "path": f"Image_{i}.jpg"}
              for i in range(len(labels))]
    pq.write_table(pa.table({"image": images, "labels": labels}, schema=HF_SCHEMA), path)
    return images


def test_huggingface_parquet_in_the_hub_schema_becomes_the_kaggle_layout(tmp_path):
    source = tmp_path / "hub" / "data"
    source.mkdir(parents=True)
    images = _write_hf_parquet(source / "train-00000-of-00001.parquet", [0, 14, 3, 99])
    _write_hf_parquet(source / "test-00000-of-00001.parquet", [0, 0])  # placeholder labels
    out = tmp_path / "raw"
    count = dl.download(DownloadConfig(source="huggingface", path=str(tmp_path / "hub")), out)
    rows = read_labels_csv(out / "Training_set.csv")
    assert count == 4  # the test split was not read
    assert [row.label for row in rows] == ["calling", "using_laptop", "dancing", "label_id_99"]
    assert [(out / "train" / row.filename).read_bytes() for row in rows] == \
        [image["bytes"] for image in images]


def test_parquet_without_the_hub_columns_is_rejected_naming_the_file(tmp_path):
    pq.write_table(pa.table({"img": [b"x"], "label": [1]}), tmp_path / "train.parquet")
    with pytest.raises(StageError, match=r"train.parquet: missing column\(s\) \['image', "):
        dl.download(DownloadConfig(source="huggingface", path=str(tmp_path / "train.parquet")),
                    tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


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


def test_kaggle_zip_extracts_the_labelled_train_split_only(tmp_path):
    _write_kaggle_zip(tmp_path / "har.zip", ["sitting", "texting", "cycling"])
    out = tmp_path / "raw"
    assert dl.download(DownloadConfig(source="kaggle", path=str(tmp_path / "har.zip")), out) == 3
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
    assert dl.download(DownloadConfig(source="folder", path=str(tmp_path / "src")), out) == 4
    rows = read_labels_csv(out / "Training_set.csv")
    assert Counter(row.label for row in rows) == {"eating": 2, "hugging": 2}
    assert all((out / "train" / row.filename).is_file() for row in rows)


def test_real_har_sample_in_the_kaggle_layout(har_sample, tmp_path):
    out = tmp_path / "raw"
    assert dl.download(DownloadConfig(source="folder", path=str(har_sample)), out) == 3600
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
        dl.download(DownloadConfig(source="huggingface"), out)
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
        dl.download(DownloadConfig(source="kaggle"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("source", ["kaggle", "folder"])
def test_missing_local_source_names_the_path(tmp_path, source):
    missing = tmp_path / "nowhere"
    with pytest.raises(StageError, match=f"{missing}: .*not found"):
        dl.download(DownloadConfig(source=source, path=str(missing)), tmp_path / "raw")


def test_corrupt_zip_is_named(tmp_path):
    (tmp_path / "har.zip").write_bytes(b"PK-but-not-really")
    with pytest.raises(StageError, match="har.zip: not a readable zip"):
        dl.download(DownloadConfig(source="kaggle", path=str(tmp_path / "har.zip")),
                    tmp_path / "raw")
