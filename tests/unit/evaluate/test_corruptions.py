"""Common corruptions of the held-out split: albumentations' transforms at ImageNet-C's
severities, the same images for every model and batch size, an identity at severity 0 and a
real loss of accuracy at severity 5, on the shipped start's zero-shot model."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from harclip.config.schema import CORRUPTIONS
from harclip.data.cache import load_split
from harclip.data.layout import CLASS_NAMES
from harclip.evaluate.baselines import zero_shot_model
from harclip.evaluate.corruptions import (
    TRANSFORMS,
    corrupted_accuracy,
    corrupter,
    corruption_scores,
)
from harclip.model.backbones import preprocessing_of
from harclip.model.views import DeviceAugment
from tests.support import REPO_ROOT
from tests.support.params import evaluate_config, shipped, train_config

CPU = torch.device("cpu")


def test_every_corruption_params_yaml_may_name_has_a_transform():
    assert set(CORRUPTIONS) == set(TRANSFORMS)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (9, 3, 40, 40), dtype=np.uint8)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_corruption_changes_the_images_more_as_its_severity_grows(images, name):
    mild, severe = (corrupter(name, severity, 40, seed=0)(images) for severity in (1, 5))
    assert mild.shape == severe.shape == images.shape and severe.dtype == np.uint8
    change = [np.abs(out.astype(int) - images).mean() for out in (mild, severe)]
    assert change[0] < change[1]  # and so severity 5 changes them
    assert np.array_equal(corrupter(name, 0, 40, seed=0)(images), images)  # severity 0


@pytest.mark.parametrize("name", sorted(set(CORRUPTIONS) - {"gaussian_noise"}))
def test_the_other_corruptions_are_fixed_per_severity(images, name):
    """One transform for every image: blur's kernel, JPEG's quality and the rest are not
    drawn per image (a blur of kernel 1 would leave an image untouched)."""
    corrupt = corrupter(name, 3, 40, seed=0)
    twice = np.concatenate([images[:1], images[:1]])
    out = corrupt(twice)
    assert np.array_equal(out[0], out[1])
    assert np.array_equal(corrupter(name, 3, 40, seed=1)(images), corrupt(images))
    assert all(np.abs(o.astype(int) - i).mean() > 0 for o, i in zip(corrupt(images), images,
                                                                     strict=True))


def test_noise_is_the_same_whatever_the_batches_and_differs_with_the_seed(images):
    """Gaussian noise is the one random corruption (the others are fixed per severity)."""
    name = "gaussian_noise"
    whole = corrupter(name, 3, 40, seed=0)(images)
    in_batches = corrupter(name, 3, 40, seed=0)
    assert np.array_equal(whole, np.concatenate([in_batches(images[:4]),
                                                 in_batches(images[4:])]))
    assert not np.array_equal(whole, corrupter(name, 3, 40, seed=1)(images))
    assert not np.array_equal(whole, corrupter(name, 4, 40, seed=0)(images))


@pytest.fixture(scope="module")
def zero_shot(small_cache):
    """The shipped CLIP start's zero-shot model and the small cache's train split (a fixed
    sample of synthetic HAR images, 64 px)."""
    config = train_config(pretrained=str(REPO_ROOT / shipped().train_clip.pretrained))
    model = zero_shot_model(config, list(CLASS_NAMES))
    view = DeviceAugment.for_eval(preprocessing_of(model.clip))
    return model, view, *load_split(small_cache, "train")


def test_severity_0_keeps_the_accuracy_and_a_severe_blur_lowers_it(zero_shot):
    model, view, images, labels = zero_shot
    clean = (model(view.eval(torch.from_numpy(np.array(images)))).argmax(1).numpy()
             == labels).mean()
    identity = corrupted_accuracy(model, images, labels, view, 50, None, CPU,
                                  corrupter("gaussian_blur", 0, 64, seed=0))
    blurred = corrupted_accuracy(model, images, labels, view, 50, None, CPU,
                                 corrupter("gaussian_blur", 5, 64, seed=0))
    assert clean > 0.5  # a start that reads the images (measured 0.75)
    assert identity == pytest.approx(clean, abs=1e-9)
    assert blurred < clean - 0.06  # measured 0.62 against 0.75 on these 165 images


def test_the_scores_have_every_corruption_and_severity_asked(zero_shot):
    model, view, images, labels = zero_shot
    config = replace(evaluate_config().corruptions, names=("jpeg", "contrast"),
                     severities=(2, 4))
    scores = corruption_scores(model, images[:20], labels[:20], view, config, 8, None, CPU,
                               "clip")
    assert set(scores) == {"jpeg", "contrast"}
    assert all(list(by_severity) == ["2", "4"] and all(0 <= a <= 1 for a in by_severity.values())
               for by_severity in scores.values())


def test_importing_the_corruptions_asks_no_server_for_updates():
    code = ("import urllib.request, sys\n"
            "def refuse(*a, **k): raise SystemExit('asked the network: ' + repr(a[:1]))\n"
            "urllib.request.urlopen = urllib.request.OpenerDirector.open = refuse\n"
            "import harclip.evaluate.corruptions\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT / "src")})
    assert result.returncode == 0, result.stderr
