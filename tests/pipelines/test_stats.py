"""The intervals of pipelines/stats.py on hand-computed cases: t over seeds, Wilson over test
images for one seed, and the reproducible bootstrap draws."""

from __future__ import annotations

import numpy as np
import pytest

from eebench.pipelines.stats import (
    BINOMIAL,
    T_INTERVAL,
    binomial_se,
    bootstrap_weights,
    percentile_interval,
    point_interval,
    t_interval,
    wilson_interval,
)

#: t quantile 0.975 with 2 degrees of freedom (tables: 4.303).
T_975_2 = 4.302652729911275


def test_t_interval_of_three_seeds() -> None:
    low, high = t_interval(np.array([1.0, 2.0, 3.0]))  # mean 2, std 1
    half = T_975_2 / np.sqrt(3)
    assert (low, high) == pytest.approx((2 - half, 2 + half))
    assert np.isnan(t_interval(np.array([5.0]))).all()  # one value: no interval


def test_wilson_interval_of_a_proportion() -> None:
    low, high = wilson_interval(np.array([50.0, 0.0]), np.array([100, 100]))
    assert low[0] == pytest.approx(40.383, abs=1e-3) and high[0] == pytest.approx(59.617, abs=1e-3)
    assert low[1] == pytest.approx(0.0, abs=1e-12) and 0 < high[1] < 4  # stays in [0, 100]
    assert binomial_se(80.0, 10_000) == pytest.approx(0.4)  # √(80·20/10000)


def test_point_interval_is_t_over_seeds_or_wilson_for_one_seed() -> None:
    mean, std = np.array([2.0, 50.0, np.nan]), np.array([1.0, np.nan, np.nan])
    low, high, method = point_interval(mean, std, np.array([3, 1, 0]), np.array([100, 100, 100]))
    assert (low[0], high[0]) == pytest.approx(t_interval(np.array([1.0, 2.0, 3.0])))
    assert (low[1], high[1]) == pytest.approx((40.383, 59.617), abs=1e-3)
    assert np.isnan([low[2], high[2]]).all()
    assert method.tolist() == [T_INTERVAL, BINOMIAL, ""]


def test_bootstrap_weights_are_reproducible_draws_with_the_data_first() -> None:
    weights = bootstrap_weights(50, resamples=200)
    assert weights.shape == (201, 50)
    np.testing.assert_allclose(weights[0], 1 / 50)  # row 0: the data itself
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    counts = weights * 50
    np.testing.assert_allclose(counts, np.round(counts))  # whole draws
    assert (counts[1:] == 0).any()  # some samples left out of a draw
    np.testing.assert_array_equal(weights, bootstrap_weights(50, resamples=200))
    assert not np.array_equal(weights, bootstrap_weights(50, resamples=200, seed=1))


def test_bootstrap_mean_interval_covers_the_sampling_spread() -> None:
    """Resampled means of 0/1 values: their interval is about the binomial one."""
    values = (np.arange(400) % 5 != 0).astype(float)  # 80% correct
    means = 100 * bootstrap_weights(400) @ values
    assert means[0] == pytest.approx(80.0)
    low, high = percentile_interval(means[1:])
    expected = 1.96 * binomial_se(80.0, 400)  # 3.92 points
    assert high - low == pytest.approx(2 * expected, rel=0.15)
    assert percentile_interval(np.array([np.nan, 1.0, 1.0])) == (1.0, 1.0)
