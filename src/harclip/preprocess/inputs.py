"""What preprocess decodes: the rows of Training_set.csv that name a file inside train/ with a
known label, each resolved to its file, and the reasons the others are left out."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath

from harclip.config.schema import PreprocessConfig
from harclip.data.cache import IN_DISTRIBUTION, SPLITS
from harclip.data.decode import Rejected
from harclip.data.layout import (
    CLASSES_JSON,
    IMAGE_DIR,
    LABELS_CSV,
    SHIFT_SPLIT,
    flag_small_classes,
    read_classes,
    read_labels_csv,
    read_left_out,
)
from harclip.runtime.errors import StageError
from harclip.runtime.log import log


@dataclass(frozen=True)
class Candidate:
    """A labelled image file to decode: its path under train/, class id and given split."""

    filename: str
    label: int
    split: str = ""


LINK_LEFT_OUT = "a link leading outside the dataset folder (download.path); never followed"

_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


class _ImageFolder:
    """Resolves a CSV row's filename to a file under train/: relative paths must stay inside;
    absolute paths (from the machine a CSV was written on) are matched by base name."""

    def __init__(self, image_dir: Path, left_out: list[str]) -> None:
        self.root = image_dir.resolve()
        self.left_out = left_out
        self.files = sorted(p.relative_to(image_dir).as_posix() for p in image_dir.rglob("*")
                            if p.is_file()) if image_dir.is_dir() else []
        self.by_base: dict[str, list[str]] = defaultdict(list)
        for name in self.files:
            self.by_base[name.rsplit("/", 1)[-1]].append(name)
        self.by_base_name = 0

    def resolve(self, name: str, line: int) -> tuple[str | None, Rejected | None]:
        """(path under train/, None) or (None, why not)."""
        if _WINDOWS_ABSOLUTE.match(name) or name.startswith("/"):
            base = PureWindowsPath(name).name
            matches = self.by_base.get(base, [])
            if len(matches) == 1 and self.inside(matches[0]):
                self.by_base_name += 1
                return matches[0], None
            if len(matches) == 1:
                return None, Rejected(name, "outside_dataset",
                                      f"absolute path at line {line}; its base name's file in "
                                      f"{IMAGE_DIR}/ is a link leading outside it")
            if matches:
                return None, Rejected(name, "ambiguous_name",
                                      f"absolute path at line {line}; its base name {base!r} "
                                      f"matches {len(matches)} files in {IMAGE_DIR}/")
            return None, Rejected(name, "missing_file",
                                  f"absolute path at line {line}; no file named {base!r} in "
                                  f"{IMAGE_DIR}/")
        if not name:
            return None, Rejected(name, "missing_file", f"no filename at line {line}")
        path = self.inside(name)
        if path is None:
            return None, Rejected(name, "outside_dataset",
                                  f"line {line} points outside the dataset folder "
                                  f"{IMAGE_DIR}/")
        if not path.is_file() and self.left_behind(name):
            return None, Rejected(name, "outside_dataset",
                                  f"line {line} names {LINK_LEFT_OUT}")
        if not path.is_file():
            return None, Rejected(name, "missing_file", f"listed at line {line} but missing "
                                                        f"from {IMAGE_DIR}/")
        return path.relative_to(self.root).as_posix(), None

    def inside(self, name: str) -> Path | None:
        """The file `name` under train/ is, its links followed, where that stays inside."""
        path = (self.root / name).resolve()
        return path if path.is_relative_to(self.root) else None

    def left_behind(self, name: str) -> bool:
        """Whether download left `name` out: a link, or inside a folder link, leading out."""
        return any(_under(name, entry) for entry in self.left_out)


def _under(name: str, entry: str) -> bool:
    """Whether path `name` is the left-out link `entry`, or lies inside it (a folder, /)."""
    return name == entry or (entry.endswith("/") and name.startswith(entry))


def collect_candidates(raw_dir: Path) -> tuple[list[Candidate], list[Rejected], list[str]]:
    """Rows of Training_set.csv that name a file inside train/ with a known label (and split,
    where the CSV gives splits: every row, when it gives any of train/val/test; else a row may
    be `shift` or left empty for preprocess to split); the rest, why; and the class names."""
    rows = read_labels_csv(raw_dir / LABELS_CSV)
    classes = read_classes(raw_dir, rows)
    class_ids = {name: index for index, name in enumerate(classes)}
    left_out = read_left_out(raw_dir)
    folder = _ImageFolder(raw_dir / IMAGE_DIR, left_out)
    own_split = any(row.split in IN_DISTRIBUTION for row in rows)  # then every row needs one:
    # a blank among a dataset's own train/val/test is a mistake, not a row to split at random
    rejected: list[Rejected] = []
    by_file: dict[str, list] = defaultdict(list)
    for row in rows:
        path, problem = folder.resolve(row.filename, row.line)
        if problem:
            rejected.append(problem)
        else:
            by_file[path].append(row)
    if folder.by_base_name:
        log.info("preprocess: %d absolute paths in %s found in %s/ by their base name",
                 folder.by_base_name, LABELS_CSV, IMAGE_DIR)
    candidates = []
    for name, group in by_file.items():
        first, extra = group[0], group[1:]
        if len({(row.label, row.split) for row in group}) > 1:
            lines = ", ".join(str(row.line) for row in group)
            rejected += [Rejected(name, "conflicting_labels",
                                  f"listed with conflicting labels or splits (lines {lines})")
                         for _ in group]
            continue
        rejected += [Rejected(name, "duplicate_row",
                              f"duplicate row at line {row.line} (line {first.line} kept)")
                     for row in extra]
        if first.label not in class_ids:
            rejected.append(Rejected(name, "unknown_label",
                                     f"unknown label {first.label!r} at line {first.line}; "
                                     f"expected one of the {len(classes)} classes in "
                                     f"{CLASSES_JSON}"))
        elif (first.split or own_split) and first.split not in SPLITS:
            allowed = ", ".join(SPLITS) if own_split else \
                f"{', '.join(SPLITS)}, or empty (split by preprocess)"
            rejected.append(Rejected(name, "unknown_split",
                                     f"split {first.split!r} at line {first.line}; expected "
                                     f"one of {allowed}"))
        else:
            candidates.append(Candidate(name, class_ids[first.label], first.split))
    listed = set(by_file) | {row.filename for row in rows}
    rejected += [Rejected(name, "unlisted_file", f"not listed in {LABELS_CSV} (no label)")
                 for name in folder.files if name not in listed]
    named = {entry for entry in left_out if any(_under(name, entry) for name in listed)}
    rejected += [Rejected(entry, "outside_dataset", LINK_LEFT_OUT) for entry in left_out
                 if entry not in named]  # rows that name them are reported above
    return candidates, rejected, classes


def drop_rare_classes(candidates: list[Candidate], classes: list[str],
                      config: PreprocessConfig
                      ) -> tuple[list[Candidate], list[Rejected], list[str]]:
    """Leave out the classes with fewer than `minimum` candidates (their rows reported as
    `rare_class`, the classes named in one line), renumbering the rest; flag every class far
    smaller than the others. When most classes are that small the data set is, not a label:
    refuse, saying how to keep them."""
    minimum = config.fewest_images_per_class
    why_minimum = "preprocess.min_images_per_class" if config.min_images_per_class else \
        f"one image in each split at preprocess.val_fraction {config.val_fraction:g} and " \
        f"test_fraction {config.test_fraction:g}"
    files: dict[str, list[str]] = {name: [] for name in classes}
    for candidate in candidates:  # a class's shift images train nothing: they do not count
        if candidate.split != SHIFT_SPLIT:
            files[classes[candidate.label]].append(candidate.filename)
    typos = flag_small_classes(files, "preprocess", minimum)
    rare = [name for name, names in files.items() if len(names) < minimum]
    if len(rare) > len(classes) / 2:
        ways_out = "lower preprocess.min_images_per_class (1 keeps every class, with some " \
            "splits missing it)" if config.min_images_per_class else \
            "raise preprocess.val_fraction / test_fraction, so that a small class's share " \
            "of each split rounds up to an image (at 0.2 and 0.2, 3 images do; " \
            "test_fraction: 0 drops the test split), or set preprocess.min_images_per_class " \
            "(1 keeps every class, with some splits missing it)"
        raise StageError(f"{len(rare)} of {len(classes)} classes have fewer than {minimum} "
                         f"images, the fewest preprocess keeps a class with ({why_minimum}): "
                         f"{ways_out}")
    if not rare:
        return candidates, [], classes
    if quiet := [name for name in rare if name not in typos]:
        log.warning("preprocess: left out %d class(es) with fewer than %d images "
                    "(preprocess.min_images_per_class): %s", len(quiet), minimum,
                    ", ".join(f"{name} ({len(files[name])})" for name in quiet))
    kept = [name for name in classes if name not in rare]
    new_id = {classes.index(name): index for index, name in enumerate(kept)}
    rejected = [Rejected(c.filename, "rare_class",
                         f"class {classes[c.label]!r} has {len(files[classes[c.label]])} "
                         f"image(s), fewer than preprocess.min_images_per_class = {minimum}")
                for c in candidates if classes[c.label] in rare]
    return [replace(c, label=new_id[c.label]) for c in candidates if c.label in new_id], \
        rejected, kept
