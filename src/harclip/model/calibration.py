"""How far to trust a predicted probability: the expected calibration error (ECE: 15 equal-width
bins of the top-1 confidence, as Guo et al. 2017 count it; torchmetrics computes it), the
negative log-likelihood, the reliability diagram's bins, and temperature scaling: one scalar
T, fitted on a held-out split by NLL, divides the logits, so the probabilities change and the
predicted class never does."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15
TEMPERATURES = (0.05, 20.0)
"""The range a fitted temperature is kept in: a val split the model separates perfectly would
otherwise drive T towards 0, and an untrained model's towards infinity (probabilities uniform
to five digits)."""


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor,
                               temperature: float = 1.0) -> float:
    """ECE of softmax(logits / temperature) over `ECE_BINS` equal-width bins of the top-1
    confidence: the gap between confidence and accuracy, averaged over the images."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    probabilities = (logits.double().cpu() / temperature).softmax(dim=1)
    return float(multiclass_calibration_error(probabilities, labels.cpu(), logits.shape[1],
                                              n_bins=ECE_BINS, norm="l1"))


def negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor,
                            temperature: float = 1.0) -> float:
    """Mean NLL of the true class under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.double().cpu() / temperature, labels.cpu()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in TEMPERATURES that minimises the NLL of softmax(logits / T): scipy's bounded
    scalar minimisation over log T, in float64. Logits that are not all finite (a diverged
    model) get T = 1: no calibration rather than a wrong one."""
    from scipy.optimize import minimize_scalar

    logits, labels = logits.detach().double().cpu(), labels.cpu()
    if not torch.isfinite(logits).all():
        return 1.0
    fitted = minimize_scalar(lambda log_t: float(F.cross_entropy(logits / math.exp(log_t),
                                                                 labels)),
                             bounds=tuple(math.log(t) for t in TEMPERATURES),
                             method="bounded", options={"xatol": 1e-6})
    return float(math.exp(fitted.x))


def reliability(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict:
    """The reliability diagram's non-empty bins, the ECE's own (ECE_BINS equal-width bins of
    the top-1 confidence, an edge counted in the bin above it, as torchmetrics bins): each
    one's mean confidence, accuracy and number of images. numpy's bin counts, not
    scikit-learn's calibration curve, whose import alone costs the evaluate stage 0.4 s; the
    tests check the bins give torchmetrics' ECE back."""
    probabilities = (logits.double().cpu() / temperature).softmax(dim=1)
    confidence, predicted = (part.numpy() for part in probabilities.max(dim=1))
    correct = (predicted == labels.cpu().numpy()).astype(np.float64)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    bins = np.minimum(np.searchsorted(edges, confidence, side="right") - 1, ECE_BINS - 1)
    images = np.bincount(bins, minlength=ECE_BINS)
    present = images > 0
    return {"bins": ECE_BINS,
            "confidence": (np.bincount(bins, confidence, ECE_BINS)[present]
                           / images[present]).tolist(),
            "accuracy": (np.bincount(bins, correct, ECE_BINS)[present]
                         / images[present]).tolist(),
            "images": images[present].tolist()}


def calibration_report(logits: torch.Tensor, labels: torch.Tensor,
                       temperature: float) -> dict:
    """ECE and NLL of `logits` before (T = 1) and after dividing them by `temperature`, and
    the reliability diagram's bins of each."""
    return {"temperature": temperature,
            "ece_before": expected_calibration_error(logits, labels),
            "ece_after": expected_calibration_error(logits, labels, temperature),
            "nll_before": negative_log_likelihood(logits, labels),
            "nll_after": negative_log_likelihood(logits, labels, temperature),
            "reliability": {"before": reliability(logits, labels),
                            "after": reliability(logits, labels, temperature)}}
