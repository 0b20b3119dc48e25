"""The download stage's work: bring a labelled image set (HAR by default, or its synthetic
stand-in) into data/raw in the Kaggle layout, atomically and one run at a time."""

from __future__ import annotations

import errno
import json
from pathlib import Path

from harclip.config.schema import DownloadConfig
from harclip.data.layout import (
    LABELS_CSV,
    LEFT_OUT_KEY,
    RAW_DIR,
    SOURCE_JSON,
    flag_small_classes,
    natural_class_order,
    read_labels_csv,
    write_classes,
)
from harclip.download.sources import (
    copy_folder,
    extract_kaggle_zip,
    fetch_hf_parquet,
    fetch_kaggle_zip,
    write_from_parquet,
    write_synthetic,
)
from harclip.runtime.errors import StageError
from harclip.runtime.files import atomic_directory, output_lock
from harclip.runtime.log import log


def download(config: DownloadConfig, out_dir: Path = RAW_DIR) -> int:
    """Write the configured source to `out_dir` atomically, one run at a time; return the
    number of images."""
    with output_lock(out_dir, "download"), atomic_directory(out_dir) as staging:
        try:
            count, classes, left_out = _write_source(config, staging)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise StageError(f"{out_dir}: the disk filled while copying the dataset; free "
                             f"space and rerun (the previous {out_dir} is intact)") from None
        rows = read_labels_csv(staging / LABELS_CSV, {
            "folder": Path(config.path or "") / LABELS_CSV,
            "kaggle": f"{config.path or config.kaggle_dataset}: {LABELS_CSV}"}.get(config.source))
        if config.classes:
            classes = list(config.classes)
        elif classes is None:
            classes = natural_class_order(row.label for row in rows if row.label)
        files = {name: [] for name in classes}
        for row in rows:
            if row.label in files:
                files[row.label].append(f"line {row.line}: {row.filename}")
        flag_small_classes(files, "download", minimum=3)  # one image for train, val, test
        write_classes(staging, classes)
        provenance = {"source": config.source, "path": config.path, "images": count,
                      "classes": len(classes), LEFT_OUT_KEY: left_out}
        (staging / SOURCE_JSON).write_text(json.dumps(provenance, indent=2) + "\n")
    if left_out:
        log.warning("download: %d link(s) in %s lead outside it and were not followed "
                    "(nothing copied; preprocess lists them as outside_dataset): %s",
                    len(left_out), config.path, ", ".join(left_out[:3])
                    + (", ..." if len(left_out) > 3 else ""))
    log.info("download: %d images of %d classes from %s into %s", count, len(classes),
             config.source, out_dir)
    return count


def _write_source(config: DownloadConfig, staging: Path
                  ) -> tuple[int, list[str] | None, list[str]]:
    """The source written into `staging`: its image count, class names where the source has
    them, and the links a folder source left out because they lead outside it."""
    if config.source == "synthetic":
        return *write_synthetic(config.synthetic, staging), []
    if config.source == "huggingface":
        return *write_from_parquet(fetch_hf_parquet(config), staging, config), []
    if config.source == "kaggle":
        with fetch_kaggle_zip(config) as zip_path:
            return extract_kaggle_zip(zip_path, staging), None, []
    count, left_out = copy_folder(Path(config.path), staging)
    return count, None, left_out

