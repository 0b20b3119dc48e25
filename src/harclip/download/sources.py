"""The download stage's sources: the synthetic stand-in, a Hugging Face parquet, the Kaggle zip
and a local folder, each written into a staging folder in the Kaggle layout.

Every source ends in the same shape, `Training_set.csv` (`filename,label`) plus `train/` and
`classes.json` (the class names found, in the source's order: HAR's 15 in the hub's order, a
Hugging Face dataset's ClassLabel names, else sorted; `download.classes` pins them), so
preprocessing has one ingestion path. Images are copied as they are: checking them is the
preprocess stage's job, which reports bad files instead of dropping them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from harclip.config.schema import DownloadConfig, SyntheticConfig
from harclip.data.layout import (
    CLASS_NAMES,
    HAR_REPO,
    IMAGE_DIR,
    LABELS_CSV,
    SHIFT_SPLIT,
    natural_class_order,
    write_labels_csv,
)
from harclip.data.synthetic import scenes
from harclip.runtime.errors import StageError
from harclip.runtime.log import log, progress

KAGGLE_TOP = "Human Action Recognition"
OFFLINE_HINT = ("Without network access, set download.source: synthetic (the embedded demo "
                "data) or download.source: folder with download.path: a local HAR folder")


def write_synthetic(config: SyntheticConfig, dest: Path) -> tuple[int, list[str]]:
    """Draw the synthetic set into `dest` in the Kaggle layout; return the image count and the
    class names. The shifted images, where asked for, are the CSV's `shift` rows (the others'
    split is left to preprocess)."""
    (dest / IMAGE_DIR).mkdir(parents=True)
    shifted = config.shifted_images_per_class
    total = (config.images_per_class + shifted) * len(CLASS_NAMES)
    drawn = itertools.chain(
        ((label, image, "") for label, image in scenes.generate(
            config.images_per_class, config.image_size, config.seed)),
        ((label, image, SHIFT_SPLIT) for label, image in scenes.generate_shifted(
            shifted, config.image_size, config.seed)))
    rows = []
    for index, (label, image, split) in enumerate(progress(drawn, total=total,
                                                           desc="drawing", unit="img")):
        name = f"Image_{index + 1}.jpg"
        image.save(dest / IMAGE_DIR / name, quality=92)
        rows.append((name, label, split) if shifted else (name, label))
    write_labels_csv(dest / LABELS_CSV, rows, with_split=bool(shifted))
    return total, list(CLASS_NAMES)


def _split_parquet_files(path: Path, split: str) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if p.name.startswith(f"{split}-") or
                   p.parent.name == split)
    if not files:
        raise StageError(f"{path}: no {split} parquet files found (expected e.g. "
                         f"data/{split}-00000-of-00001.parquet; download.hf_split picks "
                         f"the split)")
    return files


def fetch_hf_parquet(config: DownloadConfig) -> list[Path]:
    """The labelled split's parquet files: from download.path, else from the Hugging Face hub.

    For HAR only the train split is labelled; the hub's test split carries placeholder labels
    (all 0) and is never fetched.
    """
    if config.path:
        return _split_parquet_files(Path(config.path), config.hf_split)
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(config.hf_repo, repo_type="dataset",
                                   allow_patterns=[f"data/{config.hf_split}-*.parquet",
                                                   f"*/{config.hf_split}/*.parquet"])
    except Exception as err:  # the hub client raises many network and auth error types
        raise StageError(
            f"could not download {config.hf_repo} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Download its data/{config.hf_split}-*.parquet "
            f"elsewhere and set download.path to it. {OFFLINE_HINT}") from err
    return _split_parquet_files(Path(folder), config.hf_split)


def hf_columns(file: Path, config: DownloadConfig) -> tuple[str, str, list[str] | None]:
    """(image column, label column, ClassLabel names) of a parquet in the Hugging Face schema.

    The columns come from download.hf_image_column / hf_label_column, else from the features
    the datasets library records in the file (`Image`, `ClassLabel`), else the names HAR's
    hub copy uses (`image`, `labels`). Names are None when the file records none.
    """
    import pyarrow.parquet as pq

    schema = pq.read_schema(file)
    try:
        features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    except (KeyError, TypeError, ValueError):
        features = {}
    typed = {kind: [name for name, feature in features.items()
                    if isinstance(feature, dict) and feature.get("_type") == kind]
             for kind in ("Image", "ClassLabel")}
    image = config.hf_image_column or next(iter(typed["Image"]), "image")
    label = config.hf_label_column or next(iter(typed["ClassLabel"]), "labels")
    missing = [name for name in (image, label) if name not in schema.names]
    if missing:
        raise StageError(
            f"{file}: missing column(s) {missing}; expected an image column "
            f"(struct{{bytes, path}}) and a class label column, found {schema.names} (set "
            f"download.hf_image_column and download.hf_label_column)")
    names = (features.get(label) or {}).get("names")
    return image, label, list(names) if names else None


def write_from_parquet(files: list[Path], dest: Path,
                       config: DownloadConfig) -> tuple[int, list[str]]:
    """Write images and labels from parquet files in the Hugging Face schema; return the count
    and the class names (the ClassLabel's; HAR's for its hub copy, whose files may not say)."""
    import pyarrow.parquet as pq

    (dest / IMAGE_DIR).mkdir(parents=True)
    rows, classes = [], None
    for file in files:
        image_column, label_column, names = hf_columns(file, config)
        names = names or (list(config.classes) if config.classes else None) or \
            (list(CLASS_NAMES) if config.hf_repo == HAR_REPO else None)
        classes = classes or names
        table = pq.read_table(file, columns=[image_column, label_column])
        records = table.to_pylist()
        for record in progress(records, desc=f"unpacking {file.name}", unit="img"):
            image, label = record[image_column] or {}, record[label_column]
            suffix = PurePosixPath(image.get("path") or "x.jpg").suffix or ".jpg"
            name = f"hf_{len(rows):05d}{suffix}"
            (dest / IMAGE_DIR / name).write_bytes(image.get("bytes") or b"")
            rows.append((name, _label_text(label, classes)))
    write_labels_csv(dest / LABELS_CSV, rows)
    return len(rows), classes or natural_class_order(label for _, label in rows)


def _label_text(label, classes: list[str] | None) -> str:
    """A class id as its name; an id outside the names is kept as text, so preprocess reports
    it instead of dropping it; a string label is its own name."""
    if isinstance(label, str):
        return label
    if classes is None:
        raise StageError("integer class labels without ClassLabel names in the parquet's "
                         "metadata: list the names in order as download.classes")
    known = isinstance(label, int) and 0 <= label < len(classes)
    return classes[label] if known else f"label_id_{label}"


def _kaggle_credentials() -> bool:
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return ((config_dir / "kaggle.json").is_file() or "KAGGLE_API_TOKEN" in os.environ
            or {"KAGGLE_USERNAME", "KAGGLE_KEY"} <= os.environ.keys())


@contextlib.contextmanager
def fetch_kaggle_zip(config: DownloadConfig) -> Iterator[Path]:
    """The HAR zip: download.path when given, else a temporary download through the Kaggle API."""
    if config.path:
        path = Path(config.path)
        if not path.is_file():
            raise StageError(f"{path}: Kaggle zip not found (download.path)")
        yield path
        return
    if not _kaggle_credentials():
        raise StageError(
            "no Kaggle credentials (~/.kaggle/kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY): "
            f"download {config.kaggle_dataset} by hand and set download.path to the zip. "
            + OFFLINE_HINT)
    with tempfile.TemporaryDirectory(prefix="harclip-kaggle-") as tmp:
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
            api.dataset_download_files(config.kaggle_dataset, path=tmp, quiet=False)
        except Exception as err:  # the Kaggle client raises network, auth and HTTP errors
            raise StageError(
                f"could not download {config.kaggle_dataset} with the Kaggle API "
                f"({type(err).__name__}: {err}). Set download.path to a local copy of the "
                f"zip. {OFFLINE_HINT}") from err
        zips = sorted(Path(tmp).glob("*.zip"))
        if not zips:
            raise StageError(f"the Kaggle API wrote no zip for {config.kaggle_dataset}")
        yield zips[0]


def extract_kaggle_zip(zip_path: Path, dest: Path) -> int:
    """Extract Training_set.csv and train/ from the HAR zip (any folder prefix) into `dest`."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise StageError(f"{zip_path}: not a readable zip ({err})") from err
    with archive:
        names = archive.namelist()
        csv_members = [n for n in names if PurePosixPath(n).name == LABELS_CSV]
        if not csv_members:
            raise StageError(
                f"{zip_path}: no {LABELS_CSV} inside; expected the Kaggle HAR layout "
                f"'{KAGGLE_TOP}/{LABELS_CSV}' with '{KAGGLE_TOP}/{IMAGE_DIR}/'")
        top = PurePosixPath(min(csv_members, key=len)).parent
        image_root = top / IMAGE_DIR
        (dest / IMAGE_DIR).mkdir(parents=True)
        dest.joinpath(LABELS_CSV).write_bytes(archive.read(str(top / LABELS_CSV)))
        members = [n for n in names if not n.endswith("/")
                   and PurePosixPath(n).parent == image_root]
        unsafe = [n for n in members if PurePosixPath(n).name in ("", ".", "..")]
        if unsafe:
            log.warning("download: skipped %d entries of %s that are not file names "
                        "(%s)", len(unsafe), zip_path, ", ".join(unsafe[:3]))
            members = [n for n in members if n not in unsafe]
        for member in progress(members, desc="extracting", unit="img"):
            # Only the base name is used, so no member can write outside `dest`.
            target = dest / IMAGE_DIR / PurePosixPath(member).name
            with archive.open(member) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
    return len(members)


def _inside(path: Path, dataset: Path) -> Path | None:
    """`path` with its links followed, where that lies inside `dataset` (a resolved folder);
    None where it leaves, or loops (where it leads cannot be told)."""
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        return None
    return real if real.is_relative_to(dataset) else None


def _files_inside(folder: Path, dataset: Path, left_out: list[str], shown_from: Path
                  ) -> Iterator[tuple[Path, Path]]:
    """The files under `folder` that are `dataset`'s own, as (path, the file it resolves
    to): links are followed only while they stay inside it, so `x.jpg -> /etc/passwd` is
    never read. Each link that leaves is added to `left_out` (its path from `shown_from`, a
    folder with a trailing /); hidden names, dangling links and links back into a folder
    already walked are skipped."""
    def unreadable(err: OSError) -> None:
        raise err

    walked = set()
    for here, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        here = Path(here)
        if here.resolve() in walked:
            dirs[:] = []
            continue
        walked.add(here.resolve())
        kept = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            if _inside(here / name, dataset):
                kept.append(name)
            else:
                left_out.append((here / name).relative_to(shown_from).as_posix() + "/")
        dirs[:] = kept
        for name in sorted(names):
            path = here / name
            if name.startswith("."):
                continue
            real = _inside(path, dataset)
            if real is None:
                left_out.append(path.relative_to(shown_from).as_posix())
            elif real.is_file():
                yield path, real


def _copy_inside(folder: Path, dataset: Path, dest: Path, left_out: list[str],
                 shown_from: Path) -> list[str]:
    """Copy `folder`'s own files (see _files_inside) under `dest`, keeping their paths from
    `shown_from`; return those paths."""
    copied = []
    for path, real in _files_inside(folder, dataset, left_out, shown_from):
        name = path.relative_to(shown_from).as_posix()
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        # The file the check resolved, not the link: a link swapped in since is copied as a
        # link (which preprocess refuses), never followed.
        shutil.copy2(real, target, follow_symlinks=False)
        copied.append(name)
    return copied


def copy_folder(source: Path, dest: Path) -> tuple[int, list[str]]:
    """Copy a local folder: Kaggle layout, or one sub-folder per class (names = labels).
    Return the image count and what was left out: each link that leads outside the folder,
    which is never followed, so nothing from elsewhere on the machine reaches data/raw, the
    DVC cache or a remote."""
    if not source.is_dir():
        raise StageError(f"{source}: folder not found (download.path)")
    dataset = source.resolve()
    left_out: list[str] = []
    if (source / LABELS_CSV).is_file():
        if not (source / IMAGE_DIR).is_dir():
            raise StageError(f"{source}: {LABELS_CSV} but no {IMAGE_DIR}/ folder beside it; "
                             f"expected the Kaggle layout ({LABELS_CSV} and {IMAGE_DIR}/)")
        for part in (source / LABELS_CSV, source / IMAGE_DIR):
            if _inside(part, dataset) is None:
                raise StageError(f"{part}: a link to {os.path.realpath(part)}, outside "
                                 f"download.path; links leaving the dataset folder are not "
                                 f"followed: set download.path to the folder that holds it")
        (dest / IMAGE_DIR).mkdir(parents=True)
        copied = _copy_inside(source / IMAGE_DIR, dataset, dest / IMAGE_DIR, left_out,
                              source / IMAGE_DIR)
        shutil.copy2((source / LABELS_CSV).resolve(), dest / LABELS_CSV, follow_symlinks=False)
        return len(copied), left_out
    class_dirs = []
    for path in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _inside(path, dataset) is None:
            left_out.append(f"{path.name}/")
        else:
            class_dirs.append(path)
    if not class_dirs:
        raise StageError(f"{source}: neither {LABELS_CSV} nor class sub-folders found; "
                         f"expected the Kaggle layout or one sub-folder per class")
    rows = []
    for class_dir in class_dirs:
        rows += [(name, class_dir.name) for name in
                 _copy_inside(class_dir, dataset, dest / IMAGE_DIR, left_out, source)]
    write_labels_csv(dest / LABELS_CSV, rows)
    return len(rows), left_out
