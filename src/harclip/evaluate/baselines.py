"""What a fine-tuned checkpoint is compared with: its zero-shot start (the untouched
pretrained backbone with the class-prompt head) and WiSE-FT's interpolations between the two."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import accuracy_score

from harclip.config.schema import TrainConfig
from harclip.data.layout import held_out_split
from harclip.model.backbones import preprocessing_of
from harclip.model.calibration import calibration_report, fit_temperature
from harclip.model.classifier import HarClassifier, build_model
from harclip.model.feed import CachedSplit
from harclip.model.scoring import split_logits
from harclip.model.views import DeviceAugment
from harclip.runtime.devices import autocast_dtype


def logits_of(model: HarClassifier, split: CachedSplit, batch_size: int,
              view: dict) -> np.ndarray:
    """Class logits for every image of a split on the deterministic view that `view`
    (input size, mean, std: a checkpoint's own, or a pretrained tag's) describes."""
    dtype = autocast_dtype("auto", split.device)
    return split_logits(model, split, DeviceAugment.for_eval(view), batch_size,
                        dtype).cpu().numpy()


def zero_shot_model(config: TrainConfig, class_names: list[str]) -> HarClassifier:
    """The untouched pretrained backbone with the class-prompt head: the model training starts
    from, built the way training builds it (without adapters)."""
    model, _ = build_model(replace(config, head_init="text", tune="full"), class_names)
    return model.eval()


def accuracies(model: HarClassifier, splits: dict[str, CachedSplit], batch_size: int,
               view: dict) -> dict[str, float]:
    return {name: float(accuracy_score(split.labels.cpu().numpy(),
                                       logits_of(model, split, batch_size, view)
                                       .argmax(axis=1)))
            for name, split in splits.items()}


def zero_shot_scores(config: TrainConfig, class_names: list[str],
                     splits: dict[str, CachedSplit], batch_size: int
                     ) -> tuple[dict[str, float], dict]:
    """The zero-shot model's (`zero_shot_model`) accuracy per split, on its tag's own view,
    and its calibration on the held-out split (test, else val) before and after a temperature
    fitted on val."""
    model = zero_shot_model(config, class_names).to(next(iter(splits.values())).device)
    view = preprocessing_of(model.clip)
    logits = {name: torch.from_numpy(logits_of(model, split, batch_size, view))
              for name, split in splits.items()}
    labels = {name: split.labels.cpu() for name, split in splits.items()}
    accuracy = {name: float(accuracy_score(labels[name], logits[name].argmax(dim=1)))
                for name in splits}
    held_out = held_out_split(splits)
    temperature = fit_temperature(logits["val"], labels["val"])
    return accuracy, {"split": held_out, **calibration_report(logits[held_out], labels[held_out],
                                                              temperature)}


def wise_ft(fine_tuned: HarClassifier, config: TrainConfig, class_names: list[str],
            splits: dict[str, CachedSplit], alphas: tuple[float, ...], batch_size: int,
            view: dict) -> dict[str, dict[str, float]]:
    """WiSE-FT (Wortsman et al., 2022): accuracy per split of the weights
    θ(α) = (1 − α)·θ_zero-shot + α·θ_fine-tuned at each α, on the checkpoint's view."""
    device = next(iter(splits.values())).device
    mixed = zero_shot_model(config, class_names).to(device)
    start = {k: v.clone() for k, v in mixed.state_dict().items()}
    tuned = fine_tuned.state_dict()
    curve = {}
    for alpha in alphas:
        mixed.load_state_dict({key: torch.lerp(value, tuned[key].to(value), alpha)
                               if value.is_floating_point() else tuned[key]
                               for key, value in start.items()})
        curve[f"{alpha:g}"] = accuracies(mixed, splits, batch_size, view)
    return curve
