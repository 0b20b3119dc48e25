import csv
import io
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from harclip.cache import load_split
from harclip.config import PreprocessConfig
from harclip.decode import decode
from harclip.har import CLASS_NAMES, write_classes, write_labels_csv
from harclip.preprocess import assign_splits, preprocess
from harclip.stage import StageError
from tests.conftest import jpeg_bytes

SIZE = 16


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _half_red_half_blue(width=40, height=20) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_exif_orientation_is_applied():
    image = _half_red_half_blue()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": left (red) ends up on top
    array = decode(_encode(image, "JPEG", exif=exif, quality=95), SIZE, fit="squash")
    top, bottom = array[:, 2, SIZE // 2], array[:, -3, SIZE // 2]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA", "I;16", "1"])
def test_every_mode_becomes_rgb_uint8(mode):
    rgb = _half_red_half_blue()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)
        assert image.mode == "I;16"
        fmt = "PNG"
    else:
        image, fmt = rgb.convert(mode), ("TIFF" if mode == "CMYK" else "PNG")
    array = decode(_encode(image, fmt), SIZE, fit="squash")
    assert array.shape == (3, SIZE, SIZE) and array.dtype == np.uint8
    if mode == "I;16":  # 16-bit values are scaled down, not clipped to white
        grey = np.asarray(rgb.convert("L"))[0, 0]
        assert abs(int(array[0, 0, 0]) - int(grey)) <= 2


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (10, 200, 10, 0))
    assert (decode(_encode(image, "PNG"), SIZE) == 255).all()


def test_crop_keeps_the_centre_and_squash_keeps_everything():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, :20] = 255  # a white strip on the left third
    data = _encode(Image.fromarray(wide), "PNG")
    assert decode(data, SIZE, fit="crop").max() < 32  # the strip is cut off (bicubic edge aside)
    assert decode(data, SIZE, fit="squash")[:, :, 0].min() > 200


def _raw_folder(root, per_class=4, classes=CLASS_NAMES[:3]):
    (root / "train").mkdir(parents=True)
    rows = []
    for c, label in enumerate(classes):
        for i in range(per_class):
            name = f"{label}_{i}.jpg"
            (root / "train" / name).write_bytes(jpeg_bytes(100 * c + i))
            rows.append((name, label))
    write_labels_csv(root / "Training_set.csv", rows)
    write_classes(root, list(classes))
    return rows


def _report(cache, column="reason"):
    with open(cache / "bad_files.csv") as handle:
        return {row["filename"]: row[column] for row in csv.DictReader(handle)}


def test_bad_inputs_are_skipped_listed_and_the_rest_is_processed(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    rows = _raw_folder(raw, per_class=10)
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

    summary = preprocess(PreprocessConfig(image_size=SIZE, max_bad_fraction=0.5, workers=2),
                         raw, cache)
    report = _report(cache)
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
    assert _report(cache, "kind") == {
        "empty.jpg": "empty_file", "notes.jpg": "not_an_image", "truncated.jpg": "corrupt_image",
        "corrupt.jpg": _report(cache, "kind")["corrupt.jpg"], "gone.jpg": "missing_file",
        "mystery.jpg": "unknown_label", "unlisted.jpg": "unlisted_file",
        rows[0][0]: "duplicate_row"}
    assert _report(cache, "kind")["corrupt.jpg"] in ("corrupt_image", "not_an_image")


def test_the_log_summary_counts_rejections_by_kind(tmp_path, caplog):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    rows = _raw_folder(raw, per_class=10)
    rows += [("gone.jpg", "calling"), ("lost (1).jpg", "calling")]
    write_labels_csv(raw / "Training_set.csv", rows)
    with caplog.at_level("WARNING", logger="harclip"):
        preprocess(PreprocessConfig(image_size=SIZE, max_bad_fraction=0.5, workers=1), raw,
                   cache)
    assert "skipped 2 of 32 inputs: 2 × listed but missing" in caplog.text


def test_too_many_bad_files_fail_without_touching_the_old_cache(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    _raw_folder(raw, per_class=3)
    for path in list((raw / "train").iterdir())[:2]:
        path.write_bytes(b"")
    cache.mkdir()
    (cache / "train_images.npy").write_text("earlier cache")
    expected = r"2 of 9 inputs .*max_bad_fraction = 0.1; nothing was written"
    with pytest.raises(StageError, match=expected):
        preprocess(PreprocessConfig(image_size=SIZE, max_bad_fraction=0.1,
                                    min_images_per_class=1), raw, cache)
    assert (cache / "train_images.npy").read_text() == "earlier cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.lock", "cache", "raw"]


def test_cache_holds_uint8_tensors_labels_classes_and_a_manifest(tmp_path):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    _raw_folder(raw, per_class=5)
    preprocess(PreprocessConfig(image_size=SIZE, val_fraction=0.4, min_images_per_class=1), raw,
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
    summary = preprocess(PreprocessConfig(image_size=32, seed=0), raw, cache)
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
