"""Decoding one image file into the cache's uint8 array, and the kinds of bad input a
dataset can hold (each reported, never silently dropped).

Any PIL mode becomes 8-bit RGB with its EXIF orientation applied; a file that cannot be used
raises BadImage with the kind the report groups it under.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
PIL_MAX_PIXELS = 89_478_485
"""PIL's own limit (Image.MAX_IMAGE_PIXELS), for callers that set none."""


class BadImage(ValueError):
    """An image file that cannot be used; the message is the reason written to the report."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


# Why an input is skipped, as a kind the report and the log summary group by.
REJECTION_KINDS = {
    "conflicting_labels": "listed with conflicting labels",
    "duplicate_row": "duplicate row",
    "unknown_label": "unknown label",
    "missing_file": "listed but missing",
    "unlisted_file": "not listed (no label)",
    "unreadable": "unreadable",
    "empty_file": "empty file",
    "not_an_image": "not an image",
    "corrupt_image": "corrupt or truncated image",
    "too_large": "too many pixels",
    "outside_dataset": "outside the dataset folder",
    "ambiguous_name": "ambiguous base name",
    "unknown_split": "unknown split",
    "rare_class": "class with too few images",
}


@dataclass(frozen=True)
class Rejected:
    """An input that was skipped: its kind (a key of REJECTION_KINDS) and the details."""

    filename: str
    kind: str
    reason: str


def summarise(rejected: list[Rejected]) -> str:
    """One line: how many inputs were skipped of each kind, most frequent first."""
    kinds = Counter(r.kind for r in rejected)
    return "; ".join(f"{count} × {REJECTION_KINDS[kind]}" for kind, count in kinds.most_common())


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit scaled down, transparency composited on white."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def fit_square(image: Image.Image, size: int, fit: str) -> Image.Image:
    """Resize to size×size: `crop` keeps the centre square, `squash` keeps everything."""
    if fit == "squash":
        return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)


def decode(data: bytes, size: int, fit: str = "crop",
           max_pixels: int = PIL_MAX_PIXELS) -> np.ndarray:
    """Bytes of any image file to a 3×size×size uint8 array, EXIF orientation applied.

    An image of more than `max_pixels` is refused before its pixels are decoded: a small
    file can hold a huge image (a decompression bomb) that would exhaust the memory.
    """
    if not data:
        raise BadImage("empty_file", "empty file (0 bytes)")
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL refuses at open beyond twice this
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below
            width, height = image.size
            if width * height > max_pixels:
                raise Image.DecompressionBombError(f"{width}×{height}")
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = fit_square(to_rgb(image), size, fit)
    except Image.DecompressionBombError as err:
        raise BadImage("too_large", f"too many pixels ({err}; more than "
                                    f"preprocess.max_image_pixels = {max_pixels:,})") from err
    except UnidentifiedImageError as err:
        raise BadImage("not_an_image", "not an image file") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImage("corrupt_image", f"corrupt or truncated image ({err})") from err
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))


def decode_file(job: tuple[Path, int, str, int]) -> tuple[np.ndarray | None, str, str]:
    """Worker: (array, sha256 of the bytes, "") or (None, rejection kind, reason)."""
    path, size, fit, max_pixels = job
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, "unreadable", f"unreadable ({err.strerror})"
    try:
        return decode(data, size, fit, max_pixels), hashlib.sha256(data).hexdigest(), ""
    except BadImage as err:
        return None, err.kind, str(err)


def hash_file(path: Path) -> tuple[str | None, str]:
    """Worker: (sha256 of the file's bytes, "") or (None, why it is unreadable); the split is
    chosen from these before any image is decoded."""
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest(), ""
    except OSError as err:
        return None, f"unreadable ({err.strerror})"


class _QuietOrphan(io.TextIOBase):
    """A pool worker's stderr that falls silent once the stage that started it is gone: the
    worker's next result, sent to the dead stage, raises BrokenPipeError, which
    multiprocessing would print as a traceback per worker."""

    def __init__(self, stream, parent: int) -> None:
        self.stream, self.parent = stream, parent

    def write(self, text: str) -> int:
        return self.stream.write(text) if os.getppid() == self.parent else len(text)

    def flush(self) -> None:
        self.stream.flush()


def worker_setup(parent: int) -> None:
    """Pool-worker initialiser. Ctrl-C is the stage's to handle (it ends the pool); a worker
    ends by itself, with one line, once its parent is gone (a SIGKILLed stage would otherwise
    leave its workers blocked forever, or printing tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the pool's terminate() ends it quietly
    stream = sys.stderr
    sys.stderr = _QuietOrphan(stream, parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        stream.write(f"preprocess: decoding worker {os.getpid()} exits, its stage is gone\n")
        stream.flush()
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
