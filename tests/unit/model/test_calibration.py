"""Calibration: the expected calibration error of toy distributions whose value is known, the
reliability diagram's bins, and temperature scaling, which lowers the NLL of an over-confident
model, never changes a predicted class and stays in its range."""

from __future__ import annotations

import math

import pytest
import torch

from harclip.model.calibration import (
    TEMPERATURES,
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability,
)


def _calibrated(n=20_000, classes=5, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from the logits' own softmax: calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(n, classes, generator=generator)
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_calibrated_distribution_has_an_ece_of_about_zero(seed):
    logits, labels = _calibrated(seed=seed)
    assert expected_calibration_error(logits, labels) < 0.02  # measured 0.008 (seed 0)


def test_a_constant_over_confident_prediction_has_the_gap_as_its_ece():
    """Every image at confidence 0.9, six of ten right: one bin, |0.9 − 0.6| = 0.3; the NLL is
    the mean of −log p of the true class."""
    other = math.log(0.1 / 4)
    logits = torch.tensor([[math.log(0.9), other, other, other, other]] * 10)
    labels = torch.tensor([0] * 6 + [1] * 4)
    assert expected_calibration_error(logits, labels) == pytest.approx(0.3, abs=1e-6)
    assert negative_log_likelihood(logits, labels) == pytest.approx(
        -(6 * math.log(0.9) + 4 * math.log(0.025)) / 10, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_temperature_of_an_over_confident_model_undoes_it_and_keeps_every_class(seed):
    logits, labels = _calibrated(seed=seed)
    over_confident = 3 * logits
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    report = calibration_report(over_confident, labels, temperature)
    assert report["nll_after"] < report["nll_before"] - 0.1
    assert report["ece_after"] < 0.02 < 0.1 < report["ece_before"]
    assert torch.equal((over_confident / temperature).softmax(dim=1).argmax(dim=1),
                       over_confident.argmax(dim=1))
    for near in (0.9 * temperature, 1.1 * temperature):  # a minimum of the NLL
        assert negative_log_likelihood(over_confident, labels, near) > report["nll_after"]


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = _calibrated()
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.05)


def test_a_temperature_stays_in_its_range_and_a_diverged_model_gets_none():
    separable = torch.zeros(12, 3)
    separable[torch.arange(12), torch.arange(12) % 3] = 5.0
    right, wrong = torch.arange(12) % 3, (torch.arange(12) + 1) % 3
    assert TEMPERATURES[0] <= fit_temperature(separable, right) < 1.0  # NLL → 0 as T → 0
    assert fit_temperature(separable, wrong) == pytest.approx(TEMPERATURES[1], rel=1e-4)
    assert fit_temperature(torch.full((3, 3), float("nan")), torch.arange(3)) == 1.0


def test_the_reliability_bins_are_the_eces_and_a_calibrated_models_lie_on_the_diagonal():
    logits, labels = _calibrated()
    bins = reliability(logits, labels)
    assert bins["bins"] == 15 and sum(bins["images"]) == len(labels)
    assert len(bins["confidence"]) == len(bins["accuracy"]) == len(bins["images"])
    assert all(0 < c <= 1 for c in bins["confidence"])
    weights = torch.tensor(bins["images"], dtype=torch.float64) / len(labels)
    gaps = (torch.tensor(bins["accuracy"]) - torch.tensor(bins["confidence"])).abs()
    assert float((weights * gaps).sum()) == pytest.approx(
        expected_calibration_error(logits, labels), abs=1e-6)  # the ECE, bin by bin
    assert float(gaps[weights > 0.02].max()) < 0.05
