"""What HAR is: its 15 actions and the Kaggle on-disk layout every source is written in."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

# The Hugging Face ClassLabel order (ids 0..14) of Bingsu/Human_Action_Recognition.
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

LABELS_CSV = "Training_set.csv"
IMAGE_DIR = "train"
CSV_COLUMNS = ("filename", "label")


@dataclass(frozen=True)
class LabelRow:
    """One row of Training_set.csv: an image path relative to `train/` and its label text."""

    line: int
    filename: str
    label: str


def write_labels_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write `filename,label` rows the way Kaggle's Training_set.csv has them."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)


def read_labels_csv(path: Path) -> list[LabelRow]:
    """Read Training_set.csv; a missing file or wrong header is an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found; expected a Kaggle-layout "
                                f"folder with {LABELS_CSV} and {IMAGE_DIR}/")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:2]) != CSV_COLUMNS:
            raise ValueError(f"{path}: expected the header 'filename,label', got {header!r}")
        return [
            LabelRow(line=number, filename=row[0].strip(),
                     label=row[1].strip() if len(row) > 1 else "")
            for number, row in enumerate(reader, start=2)
            if any(cell.strip() for cell in row)
        ]
