"""Confidence intervals of the study's numbers (docs/protocol.md, "Uncertainty").

- A point of a curve or table (top-1 of one run setting, mean over its seeds): the 95%
  t-interval over seeds with two or more seeds; with one seed, the 95% Wilson (binomial)
  interval of a proportion over the test images, i.e. what the test set's sampling alone
  allows. Both in percent.
- A difference between methods (the claims): t over the per-seed paired differences, the
  test images' variance added (`seed_image_se`, `half_width`, `one_sided_p`):
  a percentile bootstrap over 3 seeds repeats one seed in 1 draw of 27, so its interval is
  about [lowest seed, highest seed] and covers ~86% instead of 95% (simulated in
  tests/pipelines/analysis/test_stats.py). The cost ratios' image variance comes from
  `normal_draws` (a parametric bootstrap of the images, RESAMPLES draws, fixed seed).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

#: Coverage of every interval of the suite.
LEVEL = 0.95
#: The standard normal quantile of LEVEL (two-sided): 1.96.
Z = float(stats.norm.ppf(0.5 + LEVEL / 2))
#: Resamples of every bootstrap of the suite, and the seed of its draws.
RESAMPLES = 10_000
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


def normal_draws(mean: np.ndarray, cov: np.ndarray, resamples: int = RESAMPLES) -> np.ndarray:
    """resamples × len(mean) draws of a mean over test images, from the normal law its
    per-image covariance `cov` (already ÷ n_images) gives: a parametric bootstrap of the
    test images, RESAMPLES draws without a RESAMPLES × n_images weight matrix. Fixed seed:
    reproducible; the covariance's rounding-negative eigenvalues are set to 0."""
    values, vectors = np.linalg.eigh(np.atleast_2d(cov))
    root = vectors * np.sqrt(np.clip(values, 0.0, None))
    noise = np.random.default_rng([BOOTSTRAP_SEED, len(mean)]).standard_normal(
        (resamples, len(mean))
    )
    return mean + noise @ root.T


def seed_image_se(
    per_seed: np.ndarray, image_var: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two parts of a mean over seeds' error (axis 0 of `per_seed`: each seed's value
    on the same test images): the seeds' standard error s/√n on n − 1 degrees of freedom
    (0 with one seed), and the test images' √image_var (of the seed-mean: a variance the
    seeds cannot show, they share the images)."""
    per_seed = np.asarray(per_seed, dtype=np.float64)
    image_se = np.sqrt(np.asarray(image_var, dtype=np.float64))
    n = per_seed.shape[0]
    seed_se = per_seed.std(axis=0, ddof=1) / np.sqrt(n) if n >= 2 else np.zeros_like(image_se)
    return seed_se, image_se, np.full(image_se.shape, max(n - 1.0, 1.0))


def half_width(
    seed_se: np.ndarray, image_se: np.ndarray, dof: np.ndarray, level: float = LEVEL
) -> np.ndarray:
    """Half-width of the two-sided `level` interval: each part at its own quantile (t on
    the seeds' df, normal for the images), added in quadrature. Simulated coverage at 95%:
    95–98% at 2–10 seeds (Welch–Satterthwaite's single t undercovers: 93% at 3 seeds)."""
    q = 0.5 + level / 2
    return np.hypot(stats.t.ppf(q, dof) * seed_se, stats.norm.ppf(q) * image_se)


def t_bounds(
    estimate: np.ndarray,
    seed_se: np.ndarray,
    image_se: np.ndarray,
    dof: np.ndarray,
    level: float = LEVEL,
) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided `level` interval estimate ± half_width."""
    half = half_width(seed_se, image_se, dof, level)
    return estimate - half, estimate + half


def one_sided_p(
    gap: np.ndarray, seed_se: np.ndarray, image_se: np.ndarray, dof: np.ndarray
) -> np.ndarray:
    """The one-sided p-value of a distance `gap` above the reference: the α at which the
    1 − 2α interval's lower bound reaches the reference (by bisection on log α, down to 1e-16)."""
    gap, seed_se, image_se, dof = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (gap, seed_se, image_se, dof))
    )
    low, high = np.full(gap.shape, np.log(1e-16)), np.full(gap.shape, np.log(0.5))
    for _ in range(40):  # log α to 36/2^40: far below any p-value reported
        middle = (low + high) / 2
        reaches = half_width(seed_se, image_se, dof, 1 - 2 * np.exp(middle)) < np.abs(gap)
        low, high = np.where(reaches, low, middle), np.where(reaches, middle, high)
    p = np.exp(high)
    return np.where(gap > 0, p, np.where(gap < 0, 1 - p, 0.5))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN, and is not counted): a row is
    decided at LEVEL when its adjusted p ≤ 1 − LEVEL, with the family's error rate kept."""
    p_values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p_values, np.nan)
    tested = np.flatnonzero(~np.isnan(p_values))
    order = tested[np.argsort(p_values[tested], kind="stable")]
    factors = len(order) - np.arange(len(order))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(factors * p_values[order]))
    return adjusted
