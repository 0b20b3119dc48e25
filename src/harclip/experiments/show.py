"""Every run at a glance (`python -m harclip.experiments show`): the params that differ
between the runs and each model's headline numbers, inference cost included."""

from __future__ import annotations

import json

from harclip.config.schema import LABELS, METHODS
from harclip.experiments.report import params_of, value

SHOWN = {"test_acc": "test %", "val_acc": "val %", "shift_acc": "shifted %",
         "corrupt_acc": "corrupted %",
         "test_ece": "test ECE", "epoch_s": "s/epoch", "peak_mb": "MB", "inference": "inference"}
"""Each model's headline columns in `show`, as they are headed."""


def with_inference(rows: list[dict], read=None) -> list[dict]:
    """The rows with each model's inference cost (`<method>.inference`: throughput, one
    image's median latency and the device), read from its report.json at the row's commit
    (`read(path, rev)`, DVC's by default): exp_show lists the metrics files only, and eval.json
    keeps but a few numbers. A run from before inference was timed has none."""
    from dvc.exceptions import DvcException

    if read is None:
        import dvc.api

        read = dvc.api.read
    for row in rows:
        for method in METHODS:
            try:
                cost = json.loads(read(f"metrics/{method}/report.json", rev=row["rev"]))
                row[f"{method}.inference"] = \
                    f"{cost['inference']['img_s']:,.0f} img/s, " \
                    f"{cost['inference']['latency_ms_p50']:.1f} ms " \
                    f"({cost['inference']['device']})"
            except (DvcException, FileNotFoundError, KeyError, TypeError, ValueError):
                continue
    return rows


def show_table(rows: list[dict]) -> str:
    """A markdown table of the runs: each one's name, the params that differ between them,
    and every model's test, val and shifted-test accuracy, mean accuracy under the common
    corruptions, test calibration error, time per epoch, peak memory and inference throughput;
    the columns `dvc exp show` elides in a narrow terminal, and only them."""
    params = [params_of(row) for row in rows]
    varying = sorted(k for k in {k for p in params for k in p}
                     if len({repr(p.get(k)) for p in params}) > 1)
    columns = [(f"{LABELS[m]} {head}", f"{m}.{key}") for m in METHODS
               for key, head in SHOWN.items()]

    def cell(value, key: str) -> str:
        if value is None or isinstance(value, str):
            return value or "—"
        if key.endswith("_ece"):
            return f"{value:.3f}"
        if key.endswith("_acc"):
            return f"{100 * value:.1f}"
        return f"{value:.1f}" if key.endswith("_s") else f"{value:.0f}"

    lines = ["| run | " + " | ".join([*varying, *(head for head, _ in columns)]) + " |",
             "| :-- | " + " | ".join([":-:"] * (len(varying) + len(columns))) + " |"]
    for row, row_params in zip(rows, params, strict=True):
        name = row.get("Experiment") or f"{str(row.get('rev', ''))[:7]} (commit)"
        cells = [str(row_params.get(key, "—")) for key in varying]
        cells += [cell(value(row, key), key) for _, key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
