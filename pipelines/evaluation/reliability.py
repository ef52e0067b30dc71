"""Calibration of a run's predictions: ECE, NLL and reliability bins from its saved logits.

Every run's `outputs.npz` holds per-exit logits whose softmax is the run's predictive: a
trained run's raw logits, a post-hoc run's log-probabilities (softmax of log p is p, since
Σ p = 1), so one log-softmax serves both. The confidence is the max probability, binned in
`N_BINS` equal-width bins of (0, 1] (Guo et al. 2017): bin b holds (b/15, (b+1)/15], and
ECE = Σ_b (n_b / N) |accuracy_b − confidence_b|.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Equal-width confidence bins of the ECE and the reliability diagrams.
N_BINS = 15
BIN_COLUMNS = ["bin", "lower", "upper", "count", "accuracy", "confidence"]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, in float64, stable for any logit scale (and −inf-free inputs)."""
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits) (N×C)."""
    return nll_of_log_probs(log_softmax(logits), labels)


def nll_of_log_probs(log_p: np.ndarray, labels: np.ndarray) -> float:
    """`nll` from `log_softmax(logits)`, for callers that reuse the log-probabilities."""
    return float(-log_p[np.arange(len(labels)), labels].mean())


def bin_index(confidence: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Bin of each confidence: b with edge_b < c ≤ edge_{b+1}, edges = linspace(0, 1, n + 1)
    (the comparisons of Guo et al.'s code, so a confidence on an edge such as 0.2 goes to
    the bin below it; c = 0 goes to bin 0)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def reliability_bins(logits: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per bin: its edges, sample count, accuracy and mean confidence (NaN when empty)."""
    return reliability_bins_of_log_probs(log_softmax(logits), labels, n_bins)


def reliability_bins_of_log_probs(
    log_p: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS
) -> pd.DataFrame:
    """`reliability_bins` from `log_softmax(logits)`, for callers that reuse them."""
    probs = np.exp(log_p)
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    index = bin_index(confidence, n_bins)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, correct, minlength=n_bins) / count
        mean_conf = np.bincount(index, confidence, minlength=n_bins) / count
    edges = np.arange(n_bins + 1) / n_bins
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "accuracy": accuracy,
            "confidence": mean_conf,
        },
        columns=BIN_COLUMNS,
    )


def ece(bins: pd.DataFrame) -> float:
    """Σ_b (n_b / N) |accuracy_b − confidence_b| of `reliability_bins` (empty bins weigh 0)."""
    filled = bins[bins["count"] > 0]
    gap = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gap).sum() / filled["count"].sum())
