"""Saved classifiers: everything needed to use the weights later, written atomically and read
back as data only (harclip never unpickles)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from harclip.model.backbones import open_clip, preprocessing_of
from harclip.model.classifier import HarClassifier, build_classifier
from harclip.model.storage import CHECKPOINT_FORMAT, load_data, save_atomically
from harclip.model.tuning import plain_state_dict
from harclip.runtime.errors import StageError

CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = frozenset({"model", "model_config", "image_size", "mean", "std",
                             "class_names", "state_dict"})


def save_checkpoint(path: Path, model: HarClassifier, name: str, class_names: Sequence[str],
                    extra: dict) -> None:
    """Everything needed to use the weights later, written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model": name,
        "model_config": open_clip.get_model_config(name), **preprocessing_of(model.clip),
        "class_names": list(class_names), **extra,
        "state_dict": {k: v.detach().cpu() for k, v in plain_state_dict(model).items()},
    }
    save_atomically(payload, path)


def load_checkpoint(path: Path | str) -> tuple[HarClassifier, dict]:
    """Rebuild a saved classifier; a file of another format or architecture is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    payload = load_data(path, "harclip checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise StageError(f"{path}: not a harclip checkpoint (expected format "
                         f"{CHECKPOINT_FORMAT!r}); train one with `dvc repro`")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise StageError(f"{path}: checkpoint format version {payload.get('version')} is not "
                         f"the supported version {CHECKPOINT_VERSION}; retrain it")
    missing = sorted(CHECKPOINT_KEYS - payload.keys())
    if missing:
        raise StageError(f"{path}: incomplete harclip checkpoint, no {', '.join(missing)}; "
                         f"retrain it with `dvc repro`")
    name = payload["model"]
    if name not in open_clip.list_models() or \
            open_clip.get_model_config(name) != payload["model_config"]:
        raise StageError(f"{path}: saved for a {name} whose architecture differs from the "
                         f"{name} known here; retrain it or use the code it was saved with")
    # The saved normalisation is the one the weights were trained with: rebuild with it, so
    # the model's own preprocess_cfg agrees with the checkpoint.
    model = build_classifier(name, None, len(payload["class_names"]), payload["image_size"],
                             {"mean": payload["mean"], "std": payload["std"]})
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise StageError(f"{path}: its weights do not fit {name}: {err}") from err
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
