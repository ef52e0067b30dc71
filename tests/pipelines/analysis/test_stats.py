"""The intervals of pipelines/analysis/stats.py on hand-computed cases: t over seeds, Wilson over
test images for one seed, the claims' seed-and-image interval (its coverage simulated beside the
percentile bootstrap it replaces), Holm's adjustment and the reproducible normal draws."""

from __future__ import annotations

import numpy as np
import pytest

from eebench.pipelines.analysis.stats import (
    BINOMIAL,
    T_INTERVAL,
    binomial_se,
    holm,
    normal_draws,
    one_sided_p,
    point_interval,
    seed_image_se,
    t_bounds,
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


#: The simulated study (issue 31, close to the evidence study): per-seed paired difference
#: SD (training noise) and the test images' SE of a difference (shared by the seeds).
SEED_SD, IMAGE_SE, N_IMAGES, TRUE = 0.63, 0.23, 10_000, 0.5
SIMULATIONS, DRAWS = 4000, 1000


def _simulated(seeds: int) -> np.ndarray:
    """SIMULATIONS × seeds per-seed differences on one test set: truth + images + seed."""
    rng = np.random.default_rng(seeds)
    images = rng.normal(0.0, IMAGE_SE, size=(SIMULATIONS, 1))
    return TRUE + images + rng.normal(0.0, SEED_SD, size=(SIMULATIONS, seeds))


def _percentile_bootstrap(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The old claims interval: draws of seeds (multinomial) × draws of test images (here
    their normal law, the image bootstrap's), percentile 2.5–97.5."""
    rng = np.random.default_rng(1)
    simulations, seeds = per_seed.shape
    low, high = np.empty(simulations), np.empty(simulations)
    for start in range(0, simulations, 500):  # 500 simulations per block: bounded memory
        block = per_seed[start : start + 500]
        weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=(len(block), DRAWS))
        draws = np.einsum("bds,bs->bd", weights / seeds, block)
        draws += rng.normal(0.0, IMAGE_SE, size=draws.shape)
        low[start : start + 500], high[start : start + 500] = np.percentile(
            draws, [2.5, 97.5], axis=1
        )
    return low, high


@pytest.mark.parametrize("seeds", [3, 5])
def test_seed_image_interval_covers_at_three_and_five_seeds(seeds: int) -> None:
    """≥ 93% coverage at nominal 95% where the percentile bootstrap falls short (86% at 3
    seeds, its seed part about [lowest seed, highest seed]; 92% at 5)."""
    per_seed = _simulated(seeds)
    parts = seed_image_se(per_seed.T, np.full(SIMULATIONS, IMAGE_SE**2))
    low, high = t_bounds(per_seed.mean(axis=1), *parts)
    assert ((low < TRUE) & (high > TRUE)).mean() >= 0.93
    old_low, old_high = _percentile_bootstrap(per_seed)
    old = ((old_low < TRUE) & (old_high > TRUE)).mean()
    assert old < 0.93


def test_seed_image_interval_adds_the_images_and_falls_back_to_them() -> None:
    per_seed = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # two points, 3 seeds
    seed_se, image_se, dof = seed_image_se(per_seed, np.array([0.0, 0.04]))
    assert seed_se.tolist() == pytest.approx([1 / np.sqrt(3), 0.0]) and dof.tolist() == [2, 2]
    low, high = t_bounds(np.array(2.0), seed_se[0], image_se[0], dof[0])
    assert (low, high) == pytest.approx(t_interval(per_seed[:, 0]))  # no image variance
    low, high = t_bounds(np.array(0.0), seed_se[1], image_se[1], dof[1])
    assert high == pytest.approx(1.959964 * 0.2)  # images only: normal
    one = seed_image_se(per_seed[:1], np.array([0.25, 0.04]))
    assert one[0].tolist() == [0.0, 0.0] and one[1].tolist() == pytest.approx([0.5, 0.2])


def test_one_sided_p_inverts_the_interval() -> None:
    parts = (np.array([0.3, 0.3]), np.array([0.2, 0.2]), np.array([2.0, 2.0]))
    low, _ = t_bounds(np.zeros(2), *parts, level=0.9)
    p = one_sided_p(-low, *parts)  # the 90% bound just reaches 0: one-sided p = 5%
    assert p == pytest.approx([0.05, 0.05], rel=1e-6)
    assert one_sided_p(low, *parts) == pytest.approx([0.95, 0.95], rel=1e-6)
    assert one_sided_p(np.array([1.0, -1.0, 0.0]), 0.0, 0.0, 2.0).tolist() == [
        pytest.approx(1e-16),
        pytest.approx(1.0),
        0.5,
    ]


def test_holm_adjusts_step_down_and_skips_nan() -> None:
    adjusted = holm(np.array([0.01, np.nan, 0.04, 0.03]))
    assert adjusted[0] == pytest.approx(0.03) and np.isnan(adjusted[1])
    assert adjusted[3] == pytest.approx(0.06) and adjusted[2] == pytest.approx(0.06)  # monotone


def test_normal_draws_have_the_covariance_and_are_reproducible() -> None:
    cov = np.array([[4.0, 1.0], [1.0, 1.0]])
    draws = normal_draws(np.array([10.0, 0.0]), cov)
    assert draws.shape == (10_000, 2)
    np.testing.assert_allclose(np.cov(draws.T), cov, rtol=0.06)
    np.testing.assert_array_equal(draws, normal_draws(np.array([10.0, 0.0]), cov))
