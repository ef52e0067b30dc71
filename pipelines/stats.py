"""Confidence intervals of the study's numbers (docs/protocol.md, "Uncertainty").

- A point of a curve or table (top-1 of one run setting, mean over its seeds): the 95%
  t-interval over seeds with two or more seeds; with one seed, the 95% Wilson (binomial)
  interval of a proportion over the test images, i.e. what the test set's sampling alone
  allows. Both in percent.
- A difference between methods (the claims): a paired bootstrap that draws test samples
  (the same draw for every run, so the pairing is kept) and, with two or more seeds, seeds
  (the same seeds for every run); percentile interval. `bootstrap_weights` gives the draws
  as weights, so each resample's mean is a matrix product (vectorised, no loop over
  resamples). The seed of the draws is fixed: the intervals are reproducible.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

#: Coverage of every interval of the suite.
LEVEL = 0.95
#: The standard normal quantile of LEVEL (two-sided): 1.96.
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))
#: Resamples of the paired bootstrap, and the seed of its draws.
RESAMPLES = 1000
BOOTSTRAP_SEED = 20240
#: The interval of a point, in the `ci_method` column of the summaries.
T_INTERVAL, BINOMIAL = "t over seeds", "binomial (Wilson) over test images"


def t_half_width(std: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Half-width of the t-interval of a mean of n values with sample std `std` (NaN for n<2)."""
    n = np.asarray(n, dtype=np.float64)
    dof = np.where(n >= 2, n - 1, np.nan)
    return stats.t.ppf(0.5 + LEVEL / 2, dof) * np.asarray(std, dtype=np.float64) / np.sqrt(n)


def t_interval(values: np.ndarray) -> tuple[float, float]:
    """The t-interval of the mean of `values` ((NaN, NaN) with fewer than two)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return np.nan, np.nan
    half = float(t_half_width(values.std(ddof=1), len(values)))
    return float(values.mean()) - half, float(values.mean()) + half


def wilson_interval(percent: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (percent) of a proportion `percent` observed on n samples: unlike
    the normal approximation, it stays inside [0, 100] near 0 and 100."""
    p = np.asarray(percent, dtype=np.float64) / 100.0
    n = np.asarray(n, dtype=np.float64)
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * np.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2)) / (1 + Z**2 / n)
    return 100.0 * (centre - half), 100.0 * (centre + half)


def binomial_se(percent: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Standard error (percent) of an accuracy measured on n test samples."""
    p = np.asarray(percent, dtype=np.float64)
    return np.sqrt(p * (100.0 - p) / np.asarray(n, dtype=np.float64))


def point_interval(
    mean: np.ndarray, std: np.ndarray, n_seeds: np.ndarray, n_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, method) of each point: t over seeds when it has ≥2, Wilson on one seed."""
    mean, n_seeds = np.asarray(mean, dtype=np.float64), np.asarray(n_seeds)
    half = t_half_width(std, n_seeds)
    wilson_low, wilson_high = wilson_interval(mean, n_test)
    several = n_seeds >= 2
    low = np.where(several, mean - half, np.where(n_seeds == 1, wilson_low, np.nan))
    high = np.where(several, mean + half, np.where(n_seeds == 1, wilson_high, np.nan))
    method = np.where(several, T_INTERVAL, np.where(n_seeds == 1, BINOMIAL, ""))
    return low, high, method


def bootstrap_weights(n: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """(resamples + 1) × n weights of n items drawn with replacement, each row summing to 1;
    row 0 is the data itself (every item once), the others the bootstrap draws. The draws
    depend on (seed, n) only, so every run of a dataset is resampled the same way."""
    rng = np.random.default_rng([seed, n])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)
    return np.vstack([np.ones(n), counts]) / n


def percentile_interval(draws: np.ndarray) -> tuple[float, float]:
    """The central LEVEL interval of bootstrap draws (NaN draws ignored)."""
    finite = draws[~np.isnan(draws)]
    if finite.size == 0:
        return np.nan, np.nan
    low, high = np.percentile(finite, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(low), float(high)
