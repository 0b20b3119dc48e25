"""The scores the evaluate stage reports: scikit-learn's accuracy, macro-F1, top-5 and
per-class accuracy, and the few numbers eval.json keeps for `dvc metrics diff`."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score, top_k_accuracy_score

from harclip.data.layout import held_out_split

TOP_K = 5


def classification_metrics(labels: np.ndarray, logits: np.ndarray,
                           class_names: list[str]) -> tuple[dict, dict]:
    """scikit-learn's accuracy, macro-F1 and top-5 accuracy (with more than 5 classes), and
    apart from them the per-class accuracy (recall).

    A class with no image in the split has no per-class figure (None) and stays out of the
    macro average, which covers the classes present (so a class too small to reach every
    split does not count as a 0 in the split it missed).
    """
    predicted = logits.argmax(axis=1)
    present = sorted(set(labels.tolist()))
    recall = dict(zip(present, recall_score(labels, predicted, labels=present, average=None,
                                            zero_division=0), strict=True))
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro",
                                   zero_division=0)),
    }
    if len(class_names) > TOP_K:
        metrics["top5_accuracy"] = float(top_k_accuracy_score(
            labels, logits, k=TOP_K, labels=list(range(len(class_names)))))
    per_class = {name: float(recall[index]) if index in recall else None
                 for index, name in enumerate(class_names)}
    return metrics, per_class


def headline_metrics(scores: dict[str, dict]) -> dict:
    """The numbers compared across experiments: val accuracy (the study's figure), and on the
    held-out split (test, else val) accuracy, macro-F1 and top-5."""
    held_out = held_out_split(scores)
    short = {"accuracy": "acc", "macro_f1": "f1", "top5_accuracy": "top5"}
    return {"val_acc": scores["val"]["accuracy"],
            **{f"{held_out}_{short[key]}": value for key, value in scores[held_out].items()}}
