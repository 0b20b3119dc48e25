"""The on-disk layout every source is written in (Kaggle's HAR layout), and HAR's 15 actions,
the default class list.

data/raw holds `Training_set.csv` (`filename,label`, and optionally `split`: train, val, test
where a dataset ships its own split, shift for a held-out test set from another distribution,
empty for a row preprocess splits), the images under `train/`, and `classes.json`: the class
names in their order, as the source gave them.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harclip.runtime.errors import StageError
from harclip.runtime.log import log

HAR_REPO = "Bingsu/Human_Action_Recognition"
"""HAR on the Hugging Face hub."""
# The Hugging Face ClassLabel order (ids 0..14) of HAR_REPO.
CLASS_NAMES: tuple[str, ...] = (
    "calling",
    "clapping",
    "cycling",
    "dancing",
    "drinking",
    "eating",
    "fighting",
    "hugging",
    "laughing",
    "listening_to_music",
    "running",
    "sitting",
    "sleeping",
    "texting",
    "using_laptop",
)

RAW_DIR = Path("data/raw")
"""Where the download stage writes and preprocess reads."""
LABELS_CSV = "Training_set.csv"
IMAGE_DIR = "train"
CLASSES_JSON = "classes.json"
SOURCE_JSON = "source.json"
"""Where data/raw came from (download's provenance record)."""
LEFT_OUT_KEY = "outside_dataset"
"""source.json's list of the links a folder source held that lead outside it (paths under
`train/`, a folder with a trailing /): never followed, reported by preprocess."""
CSV_COLUMNS = ("filename", "label")
SPLIT_COLUMN = "split"
SHIFT_SPLIT = "shift"
"""The split value of a held-out test set drawn from another distribution than the training
images (the synthetic stand-in's other palette; any dataset's own out-of-distribution set)."""


def held_out_split(names) -> str:
    """The in-distribution split the headline figures come from, among the split `names`
    scored: test, or val for a data set without a test split."""
    return "test" if "test" in names else "val"


@dataclass(frozen=True)
class LabelRow:
    """One row of Training_set.csv: an image path relative to `train/`, its label text and,
    where the CSV has a `split` column, the split the dataset assigns it ("" otherwise)."""

    line: int
    filename: str
    label: str
    split: str = ""


def write_labels_csv(path: Path, rows: Iterable[tuple[str, ...]],
                     with_split: bool = False) -> None:
    """Write `filename,label[,split]` rows the way Kaggle's Training_set.csv has them."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS + ((SPLIT_COLUMN,) if with_split else ()))
        writer.writerows(rows)


def read_labels_csv(path: Path, shown_as: Path | str | None = None) -> list[LabelRow]:
    """Read Training_set.csv: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"),
    header names in any case, an optional `split` column. Errors name the file, or `shown_as`
    (the user's own file, where `path` is a temporary copy of it)."""
    name = shown_as or path
    if not path.is_file():
        raise FileNotFoundError(f"{name}: labels file not found; expected a Kaggle-layout "
                                f"folder with {LABELS_CSV} and {IMAGE_DIR}/")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise StageError(f"{name}: not UTF-8 text (byte {err.start}); save it as UTF-8 "
                         f"(in Excel: CSV UTF-8)") from err
    reader = csv.reader(text.splitlines())
    header = [cell.strip().lower() for cell in next(reader, [])]
    if not set(CSV_COLUMNS) <= set(header):
        raise StageError(f"{name}: expected a header with 'filename' and 'label' columns "
                         f"(and optionally 'split'), got {','.join(header)!r}")
    where = {name: header.index(name) for name in (*CSV_COLUMNS, SPLIT_COLUMN)
             if name in header}

    def cell(row: list[str], name: str) -> str:
        index = where.get(name)
        return row[index].strip() if index is not None and index < len(row) else ""

    return [LabelRow(line=number, filename=cell(row, "filename"), label=cell(row, "label"),
                     split=cell(row, SPLIT_COLUMN).lower())
            for number, row in enumerate(reader, start=2) if any(c.strip() for c in row)]


SMALL_CLASS_SHARE = 0.05
"""A class with fewer images than this share of the median class is flagged."""
MEANINGFUL_MEDIAN = 10
"""The smallest median class that says what a class's size should be: below it (a few images
a class) no class is called a typo."""


def flag_small_classes(files: Mapping[str, Sequence[str]], who: str, minimum: int = 1,
                       ) -> list[str]:
    """Warn of each class (files: class → its files, in row order) far smaller than the others
    (under `minimum` images or SMALL_CLASS_SHARE of the median, and under half the median,
    where the median is at least MEANINGFUL_MEDIAN): most likely a mistyped label that became
    a class of its own. Returns those classes."""
    counts = {name: len(rows) for name, rows in files.items()}
    median = statistics.median(counts.values()) if counts else 0
    small = [name for name, count in counts.items() if median >= MEANINGFUL_MEDIAN
             and count < max(minimum, SMALL_CLASS_SHARE * median) and count < median / 2]
    for name in small:
        shown = ", ".join(files[name][:3]) + (", ..." if counts[name] > 3 else "")
        log.warning("%s: class %r has %d image(s) (%s), against a median of %g per class: a "
                    "mistyped label? Fix it, or pin the classes with download.classes (a "
                    "label outside them is then reported as a bad row)", who, name,
                    counts[name], shown or "none", median)
    return small


def natural_class_order(labels: Iterable[str]) -> list[str]:
    """Class names found in data, in the order a dataset without its own list gets: HAR's
    order for HAR's 15 actions, else sorted."""
    found = set(labels)
    return list(CLASS_NAMES) if found == set(CLASS_NAMES) else sorted(found)


def write_classes(raw_dir: Path, classes: list[str]) -> None:
    (raw_dir / CLASSES_JSON).write_text(json.dumps(classes, indent=2) + "\n")


def read_classes(raw_dir: Path, rows: list[LabelRow]) -> list[str]:
    """The class list of a raw folder (a label outside it is reported as unknown): the
    `classes.json` download wrote, else the CSV's labels in their natural order."""
    path = raw_dir / CLASSES_JSON
    if not path.is_file():
        return natural_class_order(row.label for row in rows if row.label)
    try:
        classes = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: not a JSON list of class names ({err}); rerun the "
                         f"download stage") from err
    if not isinstance(classes, list) or not classes or \
            not all(isinstance(name, str) and name for name in classes) or \
            len(set(classes)) != len(classes):
        raise StageError(f"{path}: expected a JSON list of distinct class names; rerun the "
                         f"download stage")
    return classes


def read_left_out(raw_dir: Path) -> list[str]:
    """The links download left out of `raw_dir` because they led outside the dataset (none
    where source.json is missing or older than the record)."""
    try:
        record = json.loads((raw_dir / SOURCE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    left_out = record.get(LEFT_OUT_KEY) if isinstance(record, dict) else None
    return [name for name in left_out if isinstance(name, str)] \
        if isinstance(left_out, list) else []
