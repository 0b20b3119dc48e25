"""Links inside a dataset folder that lead out of it (`x.jpg -> /etc/passwd`, a class folder
linked to elsewhere) are never followed: nothing from outside reaches data/raw, so neither the
DVC cache nor a remote; preprocess lists each as `outside_dataset`. Links that stay inside
the folder are followed as before."""

from __future__ import annotations

import logging

import pytest

from harclip.data.layout import read_labels_csv, write_labels_csv
from harclip.download import stage as dl
from harclip.preprocess.stage import preprocess
from harclip.runtime.errors import StageError
from tests.support.images import class_folders, jpeg_bytes, kaggle_folder, rejections
from tests.support.params import download_config, preprocess_config

CLASSES = ("eating", "hugging", "running")
SECRET = b"root:x:0:0:secret-of-this-machine\n"


@pytest.fixture
def elsewhere(tmp_path):
    """A folder outside the dataset: a secret file, and a folder of real JPEGs."""
    outside = tmp_path / "elsewhere"
    (outside / "photos").mkdir(parents=True)
    (outside / "passwd").write_bytes(SECRET)
    for i in range(3):
        (outside / "photos" / f"p{i}.jpg").write_bytes(jpeg_bytes(900 + i))
    return outside


def _copied_bytes(raw):
    return [path.read_bytes() for path in raw.rglob("*") if path.is_file()]


def _download_and_preprocess(source, tmp_path, caplog):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="harclip"):
        count = dl.download(download_config(source="folder", path=str(source)), raw)
    preprocess(preprocess_config(image_size=32, workers=1, val_fraction=0.25,
                                 test_fraction=0.25, max_bad_fraction=0.5), raw, cache)
    return raw, count, rejections(cache, column="kind")


def test_links_leaving_a_kaggle_layout_folder_are_not_followed(tmp_path, elsewhere, caplog):
    source = tmp_path / "har"
    kaggle_folder(source, CLASSES, per_class=4)
    (source / "train" / "x.jpg").symlink_to(elsewhere / "passwd")
    (source / "train" / "more").symlink_to(elsewhere / "photos", target_is_directory=True)
    (source / "train" / "alias.jpg").symlink_to(source / "train" / "eating_0.jpg")
    rows = [(row.filename, row.label) for row in read_labels_csv(source / "Training_set.csv")]
    write_labels_csv(source / "Training_set.csv", [*rows, ("x.jpg", "eating"),
                                                    ("more/p0.jpg", "running"),
                                                    ("alias.jpg", "eating")])
    raw, count, kinds = _download_and_preprocess(source, tmp_path, caplog)
    assert count == 13  # the 12 images and the link that stays inside
    assert not any(SECRET in data for data in _copied_bytes(raw))
    assert not (raw / "train" / "more").exists()
    assert (raw / "train" / "alias.jpg").read_bytes() == \
        (source / "train" / "eating_0.jpg").read_bytes()
    assert kinds["x.jpg"] == kinds["more/p0.jpg"] == "outside_dataset"
    assert "more/" not in kinds  # its one listed row is reported, not the folder twice
    warnings = [r.getMessage() for r in caplog.records if "not followed" in r.getMessage()]
    assert len(warnings) == 1 and "2 link(s)" in warnings[0] and "x.jpg" in warnings[0]


def test_links_leaving_a_folder_per_class_are_not_followed(tmp_path, elsewhere, caplog):
    source = tmp_path / "har"
    class_folders(source, CLASSES, per_class=4)
    (source / "eating" / "x.jpg").symlink_to(elsewhere / "passwd")
    (source / "cycling").symlink_to(elsewhere / "photos", target_is_directory=True)
    (source / "hugging" / "nested").mkdir()
    (source / "hugging" / "nested" / "h.jpg").write_bytes(jpeg_bytes(77))
    raw, count, kinds = _download_and_preprocess(source, tmp_path, caplog)
    assert count == 13  # 4 per class and the nested one
    assert not any(SECRET in data for data in _copied_bytes(raw))
    assert not any(data == (elsewhere / "photos" / "p0.jpg").read_bytes()
                   for data in _copied_bytes(raw))
    labels = {row.filename: row.label for row in read_labels_csv(raw / "Training_set.csv")}
    assert "cycling" not in labels.values() and labels["hugging/nested/h.jpg"] == "hugging"
    assert kinds == {"eating/x.jpg": "outside_dataset", "cycling/": "outside_dataset"}


def test_a_labels_file_or_image_folder_leading_outside_is_refused(tmp_path, elsewhere):
    source = tmp_path / "har"
    kaggle_folder(source, CLASSES)
    (source / "train").rename(tmp_path / "real_train")
    (source / "train").symlink_to(tmp_path / "real_train", target_is_directory=True)
    with pytest.raises(StageError, match=r"har/train: a link to .*real_train, outside "
                                         r"download.path; .*set download.path"):
        dl.download(download_config(source="folder", path=str(source)), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_an_absolute_row_does_not_reach_a_link_leaving_data_raw(tmp_path, elsewhere):
    """A CSV written on another machine names files by absolute path, matched in train/ by
    base name: a link there that leads outside is refused as a relative row's is."""
    raw = tmp_path / "raw"
    kaggle_folder(raw, CLASSES, per_class=4)
    (elsewhere / "photos" / "x.jpg").write_bytes(jpeg_bytes(5))
    (raw / "train" / "x.jpg").symlink_to(elsewhere / "photos" / "x.jpg")
    rows = [(row.filename, row.label) for row in read_labels_csv(raw / "Training_set.csv")]
    write_labels_csv(raw / "Training_set.csv", [*rows, ("/home/someone/x.jpg", "eating"),
                                                 ("C:\\data\\x.jpg", "eating")])
    preprocess(preprocess_config(image_size=32, workers=1, val_fraction=0.25,
                                 test_fraction=0.25, max_bad_fraction=0.5), raw,
               tmp_path / "cache")
    kinds = rejections(tmp_path / "cache", column="kind")
    assert kinds["/home/someone/x.jpg"] == kinds["C:\\data\\x.jpg"] == "outside_dataset"
    manifest = (tmp_path / "cache" / "manifest.csv").read_text()
    assert "x.jpg" not in manifest.replace("_x.jpg", "")


def test_a_kaggle_layout_folder_without_its_image_folder_is_named(tmp_path):
    source = tmp_path / "har"
    kaggle_folder(source, CLASSES)
    for image in (source / "train").iterdir():
        image.unlink()
    (source / "train").rmdir()
    with pytest.raises(StageError, match=r"har: Training_set.csv but no train/ folder beside"):
        dl.download(download_config(source="folder", path=str(source)), tmp_path / "raw")
