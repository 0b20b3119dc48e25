"""The preprocess stage: bad inputs skipped and listed, the cache's tensors, labels, classes
and manifest, a deterministic stratified split with duplicates on one side, CSV paths from
another machine."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from harclip.data.cache import load_split
from harclip.data.decode import decode
from harclip.data.layout import write_labels_csv
from harclip.preprocess.splits import assign_splits
from harclip.preprocess.stage import preprocess
from harclip.runtime.errors import StageError
from tests.support.images import jpeg_bytes, raw_folder, rejections
from tests.support.params import preprocess_config

FRUIT = ["apple", "banana", "cherry", "date", "elderberry"]


SIZE = 16


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
        summary = preprocess(preprocess_config(image_size=16, workers=1, max_bad_fraction=0.3,
                                               test_fraction=0.0), raw, tmp_path / "cache")
    assert "8 absolute paths in Training_set.csv found in train/ by their base name" in \
        caplog.text
    kinds = rejections(tmp_path / "cache", "kind")
    assert kinds == {"C:\\Users\\someone\\train\\twin.jpg": "ambiguous_name",
                     "/data/elsewhere/missing.jpg": "missing_file"}
    assert summary["train_images"] + summary["val_images"] == 10
    with open(tmp_path / "cache" / "manifest.csv") as handle:
        names = {row["filename"] for row in csv.DictReader(handle)}
    assert "Image_0.jpg" in names and "a/twin.jpg" in names


def test_bad_inputs_are_skipped_listed_and_the_rest_is_processed(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    rows = raw_folder(raw, per_class=10)
    good = jpeg_bytes(1)
    bad_files = {
        "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
        "truncated.jpg": good[: len(good) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"this is a text file, not a picture\n",
    }
    for name, data in bad_files.items():
        (raw / "train" / name).write_bytes(data)
    (raw / "train" / "unlisted.jpg").write_bytes(jpeg_bytes(5))
    (raw / "train" / "mystery.jpg").write_bytes(jpeg_bytes(6))
    rows += [(name, "calling") for name in bad_files]
    rows += [("gone.jpg", "calling"), ("mystery.jpg", "juggling"), (rows[0][0], rows[0][1])]
    write_labels_csv(raw / "Training_set.csv", rows)

    summary = preprocess(preprocess_config(image_size=SIZE, max_bad_fraction=0.5, workers=2),
                         raw, cache)
    report = rejections(cache)
    assert report["empty.jpg"] == "empty file (0 bytes)"
    assert report["notes.jpg"] == "not an image file"
    assert report["corrupt.jpg"].startswith(("corrupt or truncated", "not an image"))
    assert report["truncated.jpg"].startswith("corrupt or truncated")
    assert "missing from train/" in report["gone.jpg"]
    assert "unknown label 'juggling'" in report["mystery.jpg"]
    assert "not listed in Training_set.csv" in report["unlisted.jpg"]
    assert "duplicate row" in report[rows[0][0]]
    assert summary["bad_files"] == len(report) == 8
    assert summary["train_images"] + summary["val_images"] + summary["test_images"] == 30
    assert rejections(cache, "kind") == {
        "empty.jpg": "empty_file", "notes.jpg": "not_an_image", "truncated.jpg": "corrupt_image",
        "corrupt.jpg": rejections(cache, "kind")["corrupt.jpg"], "gone.jpg": "missing_file",
        "mystery.jpg": "unknown_label", "unlisted.jpg": "unlisted_file",
        rows[0][0]: "duplicate_row"}
    assert rejections(cache, "kind")["corrupt.jpg"] in ("corrupt_image", "not_an_image")


def test_the_log_summary_counts_rejections_by_kind(tmp_path, caplog):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    rows = raw_folder(raw, per_class=10)
    rows += [("gone.jpg", "calling"), ("lost (1).jpg", "calling")]
    write_labels_csv(raw / "Training_set.csv", rows)
    with caplog.at_level("WARNING", logger="harclip"):
        preprocess(preprocess_config(image_size=SIZE, max_bad_fraction=0.5, workers=1), raw,
                   cache)
    assert "skipped 2 of 32 inputs: 2 × listed but missing" in caplog.text


def test_too_many_bad_files_fail_without_touching_the_old_cache(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    raw_folder(raw, per_class=3)
    for path in list((raw / "train").iterdir())[:2]:
        path.write_bytes(b"")
    cache.mkdir()
    (cache / "train_images.npy").write_text("earlier cache")
    expected = r"2 of 9 inputs .*max_bad_fraction = 0.1; nothing was written"
    with pytest.raises(StageError, match=expected):
        preprocess(preprocess_config(image_size=SIZE, max_bad_fraction=0.1,
                                     min_images_per_class=1), raw, cache)
    assert (cache / "train_images.npy").read_text() == "earlier cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.lock", "cache", "raw"]


def test_cache_holds_uint8_tensors_labels_classes_and_a_manifest(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    raw_folder(raw, per_class=5)
    preprocess(preprocess_config(image_size=SIZE, val_fraction=0.4, min_images_per_class=1), raw,
               cache)
    images, labels = load_split(cache, "train")
    assert isinstance(images, np.memmap)
    assert images.shape == (9, 3, SIZE, SIZE) and images.dtype == np.uint8
    assert Counter(labels.tolist()) == {0: 3, 1: 3, 2: 3}
    with open(cache / "manifest.csv") as handle:
        manifest = list(csv.DictReader(handle))
    assert Counter(row["split"] for row in manifest) == {"train": 9, "val": 6}
    first_train = next(row for row in manifest if row["split"] == "train")
    expected = decode((raw / "train" / first_train["filename"]).read_bytes(), SIZE)
    assert np.array_equal(images[int(first_train["index"])], expected)


def test_split_is_deterministic_stratified_disjoint_and_keeps_duplicates_together():
    labels = [c for c in range(15) for _ in range(40)]
    hashes = [f"h{i}" for i in range(len(labels))]
    for i in range(0, 600, 20):  # 30 duplicate pairs (same class, byte-identical)
        hashes[i + 1] = hashes[i]
    first = assign_splits(labels, hashes, 0.2, 0.1, seed=3)
    assert np.array_equal(first, assign_splits(labels, hashes, 0.2, 0.1, seed=3))
    assert not np.array_equal(first, assign_splits(labels, hashes, 0.2, 0.1, seed=4))
    for side, per_class in ((1, 8), (2, 4)):  # val 20 %, test 10 % of each class's 40
        counts = Counter(np.asarray(labels)[first == side].tolist())
        assert all(counts[c] == per_class for c in range(15))
    assert set(first.tolist()) == {0, 1, 2}  # each image in exactly one split
    for i in range(0, 600, 20):
        assert first[i] == first[i + 1]
    # without a test share the val split is the one a two-way split would draw
    two_way = assign_splits(labels, hashes, 0.2, 0.0, seed=3)
    assert set(two_way.tolist()) == {0, 1}


def test_real_sample_duplicates_land_on_one_side(har_sample, tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    shutil.copytree(har_sample / "train", raw / "train")
    shutil.copy(har_sample / "Training_set.csv", raw / "Training_set.csv")
    summary = preprocess(preprocess_config(image_size=32, seed=0), raw, cache)
    assert summary["bad_files"] == 0
    assert summary["duplicate_groups"] == 55
    with open(cache / "manifest.csv") as handle:
        manifest = list(csv.DictReader(handle))
    sides: dict[str, set] = {}
    for row in manifest:
        sides.setdefault(row["sha256"], set()).add(row["split"])
    groups = [h for h in sides if sum(r["sha256"] == h for r in manifest) > 1]
    assert len(groups) == 55
    assert all(len(sides[h]) == 1 for h in groups)
    for split, share in (("val", 48), ("test", 24)):  # 20 % and 10 % of 240 in every class
        per_class = Counter(row["label"] for row in manifest if row["split"] == split)
        assert set(per_class.values()) == {share}


def test_a_csvs_shift_rows_are_held_out_and_the_rest_split_seeded(tmp_path, caplog):
    """A CSV may give only its shifted test set (what the synthetic source writes): those rows
    go to the shift split, the rows with an empty split are split as without a column (but a
    copy of a shifted image, which goes with it), and an unknown split value is a bad row
    naming the ones allowed."""
    raw = tmp_path / "raw"
    rows = raw_folder(raw, per_class=10)
    sides = (["shift"] * 2 + [""] * 8) * 3
    sides[-1] = "holdout"
    copy = ("copy_of_a_shifted_image.jpg", rows[0][1])
    shutil.copy(raw / "train" / rows[0][0], raw / "train" / copy[0])
    write_labels_csv(raw / "Training_set.csv",
                     [(*row, side) for row, side in zip(rows, sides, strict=True)]
                     + [(*copy, "")], with_split=True)
    config = preprocess_config(image_size=SIZE, workers=1, max_bad_fraction=0.1)
    with caplog.at_level("INFO", logger="harclip"):
        summary = preprocess(config, raw, tmp_path / "cache")
    assert "1 image(s) without a split in Training_set.csv are byte-identical to one with a " \
           "split, and go with it" in caplog.text
    assert summary["shift_images"] == 7 and summary["split_source"] == "seeded"
    assert summary["train_images"] + summary["val_images"] + summary["test_images"] == 23
    manifest = list(csv.DictReader((tmp_path / "cache" / "manifest.csv").read_text()
                                   .splitlines()))
    shifted = {row["filename"] for row in manifest if row["split"] == "shift"}
    assert shifted == {name for (name, _), side in zip(rows, sides, strict=True)
                       if side == "shift"} | {copy[0]}
    images, labels = load_split(tmp_path / "cache", "shift")
    assert images.shape == (7, 3, SIZE, SIZE) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 2, 2]
    assert rejections(tmp_path / "cache") == {
        rows[-1][0]: "split 'holdout' at line 31; expected one of train, val, test, shift, or "
                     "empty (split by preprocess)"}
    # the seeded rows split exactly as the same rows would with no split column
    seeded = [row for row, side in zip(rows, sides, strict=True) if side == ""]
    write_labels_csv(raw / "Training_set.csv", seeded)
    preprocess(replace(config, max_bad_fraction=0.5), raw, tmp_path / "alone")  # the rest: unlisted
    alone = {row["filename"]: row["split"] for row in csv.DictReader(
        (tmp_path / "alone" / "manifest.csv").read_text().splitlines())}
    assert {row["filename"]: row["split"] for row in manifest
            if row["filename"] in alone} == alone


def test_a_csv_with_its_own_split_must_give_every_row_one(tmp_path):
    """A blank among a dataset's own train/val/test is a bad row, as it always was: seeding it
    would slip random rows into the dataset's own test set."""
    raw = tmp_path / "raw"
    rows = raw_folder(raw, per_class=8)
    sides = ["train"] * 5 + ["val", "test", "shift"]
    sides = sides * 3
    sides[0] = ""
    write_labels_csv(raw / "Training_set.csv",
                     [(*row, side) for row, side in zip(rows, sides, strict=True)],
                     with_split=True)
    summary = preprocess(preprocess_config(image_size=SIZE, workers=1, max_bad_fraction=0.1),
                         raw, tmp_path / "cache")
    assert rejections(tmp_path / "cache") == {
        rows[0][0]: "split '' at line 2; expected one of train, val, test, shift"}
    assert [summary[f"{side}_images"] for side in ("train", "val", "test", "shift")] == \
        [14, 3, 3, 3]
    assert summary["split_source"] == "given"
