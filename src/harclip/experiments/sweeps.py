"""The sweeps, queued through DVC's own experiment queue (`dvc exp run --queue -S ...`, then
`dvc queue start`): every model at other seeds, A-CLIP's token choice, the fine-tuning tools,
and few labels (k images a class).

A key the three models share is set once in `train`; a key the params file sets per model (the
start, A-CLIP's masking) in each `train_<method>`. A key in a model's own section goes in with
Hydra's force-add (`++train_aclip.seed=1`): DVC's `-S` needs it for a key the section does not
hold yet, and it overrides one the section holds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from harclip.config.params import SHARED, TRAIN_SECTIONS, load_params, read_yaml
from harclip.runtime.errors import StageError

ABLATION = [  # (label, saliency, keep ratio), in the order they are queued
    ("attentive, teacher every step", "teacher", 0.75),
    ("random (FLIP)", "random", 0.75),
    ("all tokens", "random", 1.0),
    ("attentive, cached saliency", "cached", 0.75),
    ("attentive, teacher every step", "teacher", 0.5),
    ("random (FLIP)", "random", 0.5),
    ("attentive, cached saliency", "cached", 0.5),
]
"""Full-token training needs no saliency: `random` at keep ratio 1.0 keeps every token."""
FINETUNE = [  # (label, what each train_* section sets), in the order they are queued
    ("full fine-tuning", {}),
    ("+ layer decay 0.75", {"layer_decay": 0.75}),
    ("+ EMA of the weights 0.99", {"ema_decay": 0.99}),
    ("+ label smoothing 0.1", {"label_smoothing": 0.1}),
    ("all three", {"layer_decay": 0.75, "ema_decay": 0.99, "label_smoothing": 0.1}),
    ("linear probe", {"tune": "linear"}),
    ("LoRA, rank 4", {"tune": "lora"}),
    ("gradient checkpointing", {"grad_checkpointing": True}),
    ("from scratch, lr 1e-3", {"pretrained": None, "head_init": "random", "lr": 1e-3}),
]
"""The fine-tuning tools side by side; full fine-tuning is the commit's own run and the seeds
sweep's, and WiSE-FT comes from its evaluation (evaluate.wise_alphas)."""
FINETUNE_KEYS = sorted({key for _, keys in FINETUNE for key in keys})


def _dvc(*args: str) -> None:
    """Run `dvc args`; its own message says why it failed, then one line of ours."""
    if (code := subprocess.run(["dvc", *args]).returncode) != 0:
        raise StageError(f"`dvc {' '.join(args)}` failed (exit {code}): see DVC's message above")


def set_training(params: Path, key: str, setting) -> list[str]:
    """`-S` arguments that set a training key for the three models: once in the shared
    section, or, where a model's own section holds the key (and would override the shared
    value), in each model's, force-added (`++`) to those that lack it."""
    raw = read_yaml(params)
    text = json.dumps(setting)
    if any(key in (raw.get(section) or {}) for section in TRAIN_SECTIONS):
        return [arg for section in TRAIN_SECTIONS for arg in ("-S", f"++{section}.{key}={text}")]
    return ["-S", f"{SHARED}.{key}={text}"]


def queue_seeds(params: Path, seeds: list[int], jobs: int) -> None:
    """Queue every model at each seed (the same seed for the three), then start the queue
    (`jobs` 0: queue only)."""
    for seed in seeds:
        _dvc("exp", "run", "--queue", "--name", f"seed-{seed}", *set_training(params, "seed", seed))
    if jobs:
        _dvc("queue", "start", "-j", str(jobs))


def queue_ablation(params: Path, seeds: list[int], jobs: int,
                   keep_ratios: tuple[float, ...] = (0.75, 0.5)) -> None:
    """Queue the A-CLIP stage at every (token choice, keep ratio) and seed, then start (`jobs`
    0: queue only); all tokens (keep 1.0) always. The run params.yaml itself describes is the
    commit's own and is not queued again."""
    aclip = load_params(params).train_aclip
    own = (aclip.aclip.saliency, aclip.aclip.keep_ratio, aclip.seed)
    for _, saliency, keep in ABLATION:
        if keep not in (*keep_ratios, 1.0):
            continue
        for seed in seeds:
            if (saliency, keep, seed) == own:
                print(f"saliency={saliency} keep_ratio={keep} seed={seed}: params.yaml's own "
                      "run (the commit's results), not queued")
                continue
            _dvc("exp", "run", "--queue", "--name", f"abl-{saliency}-{keep}-s{seed}",
                 "-S", f"train_aclip.aclip.saliency={saliency}",
                 "-S", f"train_aclip.aclip.keep_ratio={keep}",
                 "-S", f"++train_aclip.seed={seed}")
    if jobs:
        _dvc("queue", "start", "-j", str(jobs))


def queue_finetune(params: Path, seeds: list[int], jobs: int) -> None:
    """Queue every fine-tuning arm but full fine-tuning (the commit's own run and the seeds
    sweep's) at each seed, the same keys for the three models, then start (`jobs` 0: queue
    only)."""
    for label, keys in FINETUNE[1:]:
        for seed in seeds:
            sets = [arg for key, setting in {**keys, "seed": seed}.items()
                    for arg in set_training(params, key, setting)]
            slug = "-".join(label.replace(",", "").replace("+ ", "").split()[:3])
            _dvc("exp", "run", "--queue", "--name", f"ft-{slug}-s{seed}", *sets)
    if jobs:
        _dvc("queue", "start", "-j", str(jobs))


SHOTS_ARMS = [("full fine-tuning", "full"), ("linear probe", "linear"), ("LoRA (rank 4)", "lora")]
"""What trains at each number of shots: (label, `tune`)."""
SHOTS_EVALUATE = {"evaluate.wise_alphas": [], "evaluate.corruptions.names": []}
"""A shots run's evaluation skips WiSE-FT's blends and the corruptions: they are the
full-data runs' question, and they would take most of a few-shot run's evaluation."""


def queue_shots(params: Path, shots: list[int], seeds: list[int], jobs: int) -> None:
    """Queue every model at `shots_per_class` k for each k, arm (`tune`: full, linear, lora)
    and seed, evaluating without WiSE-FT or corruptions (SHOTS_EVALUATE), then start (`jobs`
    0: queue only). Full data is the commit's own run and the seeds sweep's; zero-shot comes
    from every evaluation."""
    for k in shots:
        for _, tune in SHOTS_ARMS:
            for seed in seeds:
                sets = [arg for key, setting in {"shots_per_class": k, "tune": tune,
                                                 "seed": seed}.items()
                        for arg in set_training(params, key, setting)]
                sets += [arg for key, setting in SHOTS_EVALUATE.items()
                         for arg in ("-S", f"{key}={json.dumps(setting)}")]
                _dvc("exp", "run", "--queue", "--name", f"shots-{k}-{tune}-s{seed}", *sets)
    if jobs:
        _dvc("queue", "start", "-j", str(jobs))
