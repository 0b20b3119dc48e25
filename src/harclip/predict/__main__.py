"""Predict the classes of images with a trained checkpoint (its own class names).

    python -m harclip.predict --model models/sglip.pt photo.jpg folder/ [--top-k 3]
    harclip-predict --model models/clip.pt folder/ --format csv --output predictions.csv

Each image goes through the checkpoint's own preprocessing (its input size and
normalisation); directories are read recursively and scored in batches. A file that is not an
image, or one of more pixels than PIL's limit (a decompression bomb), is reported and skipped;
when nothing was predicted the command says so and exits 2.
The command line, the input files and the output formats live here (no torch: `--help`
answers at once); the scoring is `harclip.predict.classify`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harclip.runtime import harness
from harclip.runtime.errors import StageError
from harclip.runtime.log import log

if TYPE_CHECKING:
    from harclip.predict.classify import Prediction


def render(predictions: list[Prediction], fmt: str) -> str:
    """The predictions as aligned text, CSV (one row per rank) or JSON."""
    if fmt == "json":
        return json.dumps([{"path": p.path, "predictions": [
            {"label": label, "probability": round(prob, 6)}
            for label, prob in zip(p.labels, p.probabilities, strict=True)]}
            for p in predictions], indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(("path", "rank", "label", "probability"))
        for p in predictions:
            writer.writerows((p.path, rank, label, f"{prob:.6f}") for rank, (label, prob)
                             in enumerate(zip(p.labels, p.probabilities, strict=True), 1))
        return buffer.getvalue()
    return "".join(f"{p.path}: " + ", ".join(f"{label} {prob:.1%}" for label, prob in
                                             zip(p.labels, p.probabilities, strict=True)) + "\n"
                   for p in predictions)


def main() -> None:
    cli = argparse.ArgumentParser(description="Predict the classes of images (HAR's actions, or "
                                              "the classes a checkpoint was trained on) with a "
                                              "trained checkpoint (models/<method>.pt).")
    cli.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_DIR")
    cli.add_argument("--model", type=Path, required=True, help="a checkpoint, e.g. "
                     "models/sglip.pt")
    cli.add_argument("--top-k", type=harness.positive_int, default=3,
                     help="classes per image (%(default)s)")
    cli.add_argument("--format", choices=("text", "csv", "json"), default="text")
    cli.add_argument("--output", type=Path, help="write here instead of standard output")
    cli.add_argument("--batch-size", type=harness.positive_int, default=64)
    cli.add_argument("--fit", choices=("crop", "squash"), default="crop",
                     help="how images become square, as preprocess.fit (%(default)s)")
    cli.add_argument("--device", default="auto")
    args = cli.parse_args()

    def run() -> None:
        from harclip.model.checkpoints import load_checkpoint  # torch: after the arguments
        from harclip.predict.classify import classify, image_files
        from harclip.runtime.devices import resolve_device

        files = image_files(args.inputs)
        if not files:
            raise StageError(f"nothing to predict: no files in "
                             f"{', '.join(map(str, args.inputs))}")
        model, meta = load_checkpoint(args.model)
        predictions, skipped = classify(model, meta, files, args.top_k, args.batch_size,
                                        args.fit, resolve_device(args.device))
        for path, reason in skipped:
            log.warning("skipped %s: %s", path, reason)
        if not predictions:
            raise StageError(f"nothing predicted: none of the {len(files)} file(s) given is "
                             f"a usable image (each is named above)")
        text = render(predictions, args.format)
        if args.output:
            args.output.write_text(text)
            log.info("predict: %d images into %s (%d skipped)", len(predictions),
                     args.output, len(skipped))
        else:
            sys.stdout.write(text)

    harness.run(run)


if __name__ == "__main__":
    main()
