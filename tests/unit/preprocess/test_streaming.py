"""Preprocess in bounded memory: the cache is written as images arrive, the split is chosen
before decoding, and a file found bad while decoding leaves its place empty. The peak RSS
figures are benchmarks/preprocess_bench.py --memory's, not a test's."""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np

from harclip.data.cache import CacheItem, CacheWriter, load_split
from harclip.data.layout import CLASS_NAMES
from harclip.preprocess import stage as pp
from tests.support.images import raw_folder
from tests.support.params import preprocess_config

SIZE = 64
IMAGE_BYTES = 3 * SIZE * SIZE


def _image(index: int) -> np.ndarray:
    return np.random.default_rng(index).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)


def test_the_cache_writer_never_holds_the_images(tmp_path):
    planned, count = [300, 100, 0], 400
    tracemalloc.start()
    try:
        with CacheWriter(tmp_path, planned, SIZE) as writer:
            for index in range(count):
                writer.add(int(index >= 300), CacheItem(f"{index}.jpg", index % 3, f"h{index}",
                                                        _image(index)))
            writer.close(["a", "b", "c"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < count * IMAGE_BYTES / 10, f"{peak:,} bytes held while writing"
    images, labels = load_split(tmp_path, "val")
    assert np.array_equal(images[7], _image(307)) and labels[7] == 307 % 3
    assert not (tmp_path / "test_images.npy").exists()  # an empty split has no files


def _preprocess_peak(raw, cache, monkeypatch) -> int:
    monkeypatch.setattr(pp, "DECODE_WINDOW", 4)
    tracemalloc.start()
    try:
        pp.preprocess(preprocess_config(image_size=SIZE, workers=1), raw, cache)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_preprocess_holds_a_few_windows_of_images_whatever_the_set_size(tmp_path, monkeypatch):
    small, large = tmp_path / "small", tmp_path / "large"
    raw_folder(small / "raw", per_class=20, classes=CLASS_NAMES[:3])
    raw_folder(large / "raw", per_class=80, classes=CLASS_NAMES[:3])
    peaks = [_preprocess_peak(root / "raw", root / "cache", monkeypatch)
             for root in (small, large)]
    # Measured 2026-12-02: 0.57 and 0.54 MB; holding the images took 1.9 and 3.9 MB.
    large_bytes = 240 * IMAGE_BYTES  # 2.9 MB: what holding the set would take
    assert peaks[1] < large_bytes / 2, f"{peaks[1]:,} bytes at peak for 240 images"
    assert peaks[1] - peaks[0] < 180 * IMAGE_BYTES / 4, peaks  # 4× the images, not 4× the peak
    images, _ = load_split(large / "cache", "train")
    assert len(images) > 150


def _splits(cache) -> dict[str, str]:
    with open(cache / "manifest.csv") as handle:
        return {row["filename"]: row["split"] for row in csv.DictReader(handle)}


def test_a_file_found_bad_while_decoding_moves_no_other_image(tmp_path):
    rows = raw_folder(tmp_path / "raw", per_class=12)
    victim = rows[5][0]
    config = preprocess_config(image_size=SIZE, workers=1, max_bad_fraction=0.1)
    pp.preprocess(config, tmp_path / "raw", tmp_path / "good")
    path = tmp_path / "raw" / "train" / victim
    path.write_bytes(path.read_bytes()[:200])  # truncated: readable, hashable, not decodable
    pp.preprocess(config, tmp_path / "raw", tmp_path / "bad")
    before, after = _splits(tmp_path / "good"), _splits(tmp_path / "bad")
    assert victim in before and victim not in after
    assert after == {name: split for name, split in before.items() if name != victim}
    side = before[victim]
    images, labels = load_split(tmp_path / "bad", side)  # its header says one image fewer
    assert len(images) == len(labels) == sum(s == side for s in after.values())
