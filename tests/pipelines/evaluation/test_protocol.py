"""The evaluation protocol: vectorised code == loop definition of docs/protocol.md, ties
included."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from eebench.pipelines.evaluation.protocol import (
    P_VALUES,
    accuracy_at_budget,
    anytime_curve,
    assign_exits,
    assign_exits_reference,
    budget_proportions,
    budgeted_curve,
    budgeted_from_logits,
    budgeted_thresholds,
    exit_proportions,
    fit_thresholds,
    fit_thresholds_reference,
    parse_exit_fractions,
    softmax_confidence,
)

INF = np.inf


def _scores(kind: str, num_exits: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random K×N scores; the tie-heavy kinds are the point of the comparison."""
    if kind == "continuous":
        return rng.random((num_exits, n))
    if kind == "quantised":  # few distinct values: many ties at every threshold
        return rng.integers(0, 4, size=(num_exits, n)) / 4
    # max softmax of logits with identical rows (bit-identical scores) and integer logits
    distinct = rng.integers(-2, 3, size=(num_exits, max(1, n // 4), 5)).astype(np.float32)
    logits = distinct[:, rng.integers(0, distinct.shape[1], size=n)]
    return softmax_confidence(logits)


# --------------------------------------------------------------------------- scores, proportions


def test_softmax_confidence_is_stable_and_correct() -> None:
    logits = np.array([[[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]]], dtype=np.float32)
    expected = [np.exp(3) / (np.exp(1) + np.exp(2) + np.exp(3)), 0.5]
    np.testing.assert_allclose(softmax_confidence(logits), [expected], rtol=1e-12)
    assert softmax_confidence(logits).dtype == np.float64


def test_softmax_confidence_is_the_max_probability_in_numpy_and_torch() -> None:
    """Against the textbook softmax (expected values computed independently), and the torch
    version that real early exit thresholds equals the numpy one that fitted them."""
    torch = pytest.importorskip("torch")
    from eebench.methods.inference import max_softmax

    logits = np.random.default_rng(0).normal(size=(3, 50, 10)).astype(np.float32) * 5
    z = logits.astype(np.float64)
    expected = (np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)).max(axis=-1)
    np.testing.assert_allclose(softmax_confidence(logits), expected, rtol=1e-12)
    in_torch = max_softmax(torch.from_numpy(logits)).numpy()
    np.testing.assert_allclose(in_torch, softmax_confidence(logits), rtol=1e-15)


def test_exit_proportions_formula() -> None:
    np.testing.assert_allclose(exit_proportions(0.5, 3), np.array([0.5, 0.25, 0.125]) / 0.875)
    np.testing.assert_allclose(exit_proportions(1.0, 4), np.full(4, 0.25))
    np.testing.assert_allclose(exit_proportions(2.0, 2), [2 / 6, 4 / 6])
    props = budget_proportions(7)
    assert props.shape == (39, 7)
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    # Row p has q = p / 20: each exit gets q times the share of the one before it ...
    q = np.arange(1, 40)[:, None] / 20
    np.testing.assert_allclose(props[:, 1:] / props[:, :-1], np.broadcast_to(q, (39, 6)))
    # ... so p = 10 (q = 1/2) halves from exit to exit and p = 20 (q = 1) is uniform.
    np.testing.assert_allclose(
        props[P_VALUES.index(10)], [64, 32, 16, 8, 4, 2, 1] / np.float64(127)
    )
    np.testing.assert_allclose(props[P_VALUES.index(20)], np.full(7, 1 / 7))
    with pytest.raises(ValueError):
        exit_proportions(0.0, 3)


# --------------------------------------------------------------------------- thresholds


def test_hand_worked_example() -> None:
    # K=3, N=6. Exit-0 scores 0.9 .8 .8 .8 .3 .2 ; exit-1 scores .99 .99 .99 .99 .6 .7
    # Row a, prop (.5, .34, .16): n_0 = floor(3.0) = 3; walking 0.9, 0.8, 0.8 the 3rd
    #   is 0.8 → T_0 = 0.8 and the tie sends samples 0–3 (four, not three). Left {4, 5};
    #   n_1 = floor(2.04) = 2, walking 0.7, 0.6 → T_1 = 0.6, both go. T = (.8, .6, −inf).
    # Row b, prop (0, .5, .5): n_0 = 0 → T_0 = +inf, nobody leaves. n_1 = 3 over all six:
    #   .99 .99 .99 → T_1 = 0.99, samples 0–3 go. T = (+inf, .99, −inf).
    # Row c, prop (.5, .5, 0): T_0 = 0.8 as in row a, 2 samples left but n_1 = 3
    #   → T_1 = +inf. T = (.8, +inf, −inf).
    scores = np.array(
        [
            [0.9, 0.8, 0.8, 0.8, 0.3, 0.2],
            [0.99, 0.99, 0.99, 0.99, 0.6, 0.7],
            [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        ]
    )
    props = np.array([[0.5, 0.34, 0.16], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0]])
    expected = np.array([[0.8, 0.6, -INF], [INF, 0.99, -INF], [0.8, INF, -INF]])
    assert np.array_equal(fit_thresholds(scores, props), expected)
    assert np.array_equal(fit_thresholds_reference(scores, props), expected)
    exits = np.array([[0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 2, 2], [0, 0, 0, 0, 2, 2]])
    assert np.array_equal(assign_exits(scores, expected), exits)
    assert np.array_equal(assign_exits_reference(scores, expected), exits)


@pytest.mark.parametrize("num_exits", [2, 4, 7])
@pytest.mark.parametrize("n", [1, 7, 60, 400])
@pytest.mark.parametrize("kind", ["continuous", "quantised", "identical_logits"])
def test_vectorised_equals_loop_definition(num_exits: int, n: int, kind: str) -> None:
    rng = np.random.default_rng([num_exits, n, len(kind)])
    val, test = _scores(kind, num_exits, n, rng), _scores(kind, num_exits, n + 13, rng)
    props = budget_proportions(num_exits)  # all 39 p
    thresholds = fit_thresholds(val, props)
    assert np.array_equal(thresholds, fit_thresholds_reference(val, props))
    for scores in (val, test):
        assert np.array_equal(
            assign_exits(scores, thresholds), assign_exits_reference(scores, thresholds)
        )


@pytest.mark.parametrize("num_exits", [2, 4, 7])
def test_vectorised_equals_loop_on_arbitrary_proportions(num_exits: int) -> None:
    """Random proportions with zeros hit both +inf cases (n_k = 0, too few remaining)."""
    rng = np.random.default_rng(num_exits)
    val = _scores("quantised", num_exits, 40, rng)
    props = rng.random((200, num_exits)) * (rng.random((200, num_exits)) < 0.7)
    props[:, -1] += 1e-3
    props /= props.sum(axis=1, keepdims=True)
    thresholds = fit_thresholds(val, props)
    assert np.array_equal(thresholds, fit_thresholds_reference(val, props))
    assert np.array_equal(assign_exits(val, thresholds), assign_exits_reference(val, thresholds))
    counts = np.floor(40 * props[:, :-1])
    assert np.isinf(thresholds[:, :-1][counts == 0]).all()
    if num_exits > 2:  # exit 0 always sees all N samples; later ones may run short
        assert (np.isinf(thresholds[:, :-1]) & (counts > 0)).any()
    assert (thresholds[:, -1] == -INF).all()


def test_invalid_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="finite"):
        fit_thresholds(np.array([[0.5, np.nan], [0.1, 0.2]]), budget_proportions(2))
    with pytest.raises(ValueError, match="non-negative"):
        fit_thresholds(np.array([[0.5, 0.3], [0.1, 0.2]]), np.array([[-0.1, 1.1]]))


# --------------------------------------------------------------------------- curves


def _hand_budgeted(val, test, correct, flops):
    """Per-p cost and accuracy from the loop definition, counted sample by sample."""
    thresholds = fit_thresholds_reference(val, budget_proportions(val.shape[0]))
    rows = []
    for exits in assign_exits_reference(test, thresholds):
        counts = [sum(1 for e in exits if e == k) for k in range(val.shape[0])]
        n = len(exits)
        cost = sum(counts[k] / n * flops[k] for k in range(val.shape[0]))
        top1 = 100 * sum(bool(correct[e, i]) for i, e in enumerate(exits)) / n
        rows.append((cost, top1, [c / n for c in counts]))
    return rows


def test_budgeted_curve_matches_hand_formula() -> None:
    rng = np.random.default_rng(1)
    val, test = _scores("quantised", 4, 80, rng), _scores("quantised", 4, 50, rng)
    correct = rng.random((4, 50)) < 0.6
    flops = np.array([10.0, 25.0, 45.5, 80.0])
    curve = budgeted_curve(val, test, correct, flops)
    assert list(curve.columns) == ["p", "q", "mflops", "top1", "exit_fractions"]
    assert curve["p"].tolist() == list(P_VALUES)
    np.testing.assert_allclose(curve["q"], np.arange(1, 40) / 20)
    for (_, row), (cost, top1, fractions) in zip(
        curve.iterrows(), _hand_budgeted(val, test, correct, flops), strict=True
    ):
        assert row["mflops"] == pytest.approx(cost, rel=1e-12)
        assert row["top1"] == pytest.approx(top1, rel=1e-12)
        np.testing.assert_allclose(parse_exit_fractions(row["exit_fractions"]), fractions)
        assert parse_exit_fractions(row["exit_fractions"]).sum() == pytest.approx(1.0)


def test_exit_fractions_survive_csv_round_trip() -> None:
    rng = np.random.default_rng(2)
    curve = budgeted_curve(
        rng.random((7, 300)), rng.random((7, 333)), rng.random((7, 333)) < 0.5, np.arange(1.0, 8)
    )
    back = pd.read_csv(io.StringIO(curve.to_csv(index=False)))
    for before, after in zip(curve["exit_fractions"], back["exit_fractions"], strict=True):
        assert np.array_equal(parse_exit_fractions(before), parse_exit_fractions(after))
    np.testing.assert_array_equal(back["mflops"], curve["mflops"])


def test_budgeted_from_logits_default_and_provided_scores() -> None:
    """Against the loop definition, with scores and correctness computed here: the textbook
    max softmax (not `softmax_confidence`) by default, the given scores otherwise."""
    rng = np.random.default_rng(3)
    val_logits = rng.normal(size=(3, 60, 5)).astype(np.float32)
    test_logits = rng.normal(size=(3, 40, 5)).astype(np.float32)
    val_y, test_y = rng.integers(0, 5, 60), rng.integers(0, 5, 40)
    flops = np.array([1.0, 2.0, 3.0])
    correct = np.array(
        [[np.argmax(test_logits[k, i]) == test_y[i] for i in range(40)] for k in range(3)]
    )

    def max_probability(logits: np.ndarray) -> np.ndarray:
        e = np.exp(logits.astype(np.float64))
        return (e / e.sum(axis=-1, keepdims=True)).max(axis=-1)

    def assert_hand(curve: pd.DataFrame, val: np.ndarray, test: np.ndarray) -> None:
        assert curve["p"].tolist() == list(P_VALUES)
        hand = _hand_budgeted(val, test, correct, flops)
        for (_, row), (cost, top1, fractions) in zip(curve.iterrows(), hand, strict=True):
            assert row["mflops"] == pytest.approx(cost, rel=1e-12)
            assert row["top1"] == pytest.approx(top1, rel=1e-12)
            np.testing.assert_allclose(parse_exit_fractions(row["exit_fractions"]), fractions)

    default = budgeted_from_logits(val_logits, val_y, test_logits, test_y, flops)
    assert_hand(default, max_probability(val_logits), max_probability(test_logits))
    # val labels only need the right shape: thresholds never read val correctness
    shuffled = budgeted_from_logits(val_logits, val_y[::-1], test_logits, test_y, flops)
    pd.testing.assert_frame_equal(shuffled, default)

    val_s, test_s = rng.random((3, 60)), rng.random((3, 40))
    provided = budgeted_from_logits(
        val_logits, val_y, test_logits, test_y, flops, val_scores=val_s, test_scores=test_s
    )
    assert_hand(provided, val_s, test_s)
    assert not provided["exit_fractions"].equals(default["exit_fractions"])
    with pytest.raises(ValueError, match="both"):
        budgeted_from_logits(val_logits, val_y, test_logits, test_y, flops, val_scores=val_s)


def test_budgeted_thresholds_last_exit_takes_the_rest() -> None:
    thresholds = budgeted_thresholds(np.random.default_rng(4).random((5, 100)))
    assert thresholds.shape == (39, 5)
    assert (thresholds[:, -1] == -INF).all()


def test_anytime_curve_by_hand() -> None:
    # exit 1 predicts 0,0,1,1 ; exit 2 predicts 0,1,1,2 ; labels 0,1,1,2 → 50 % and 100 %
    logits = np.zeros((2, 4, 3))
    logits[0, [0, 1, 2, 3], [0, 0, 1, 1]] = 1.0
    logits[1, [0, 1, 2, 3], [0, 1, 1, 2]] = 1.0
    curve = anytime_curve(logits, np.array([0, 1, 1, 2]), np.array([3.5, 7.0]))
    expected = pd.DataFrame({"exit": [1, 2], "mflops": [3.5, 7.0], "top1": [50.0, 100.0]})
    pd.testing.assert_frame_equal(curve, expected)


# --------------------------------------------------------------------------- accuracy at budget


def test_accuracy_at_budget_interpolates_between_neighbours() -> None:
    cost = np.array([50.0, 10.0, 30.0, 30.0])  # unsorted, duplicate cost 30 → mean top1 70
    top1 = np.array([80.0, 40.0, 60.0, 80.0])
    got = accuracy_at_budget(cost, top1, [10.0, 20.0, 30.0, 45.0, 50.0])
    np.testing.assert_allclose(got, [40.0, 55.0, 70.0, 77.5, 80.0])


def test_accuracy_at_budget_never_extrapolates() -> None:
    got = accuracy_at_budget([10.0, 20.0], [1.0, 2.0], [9.99, 20.01, 15.0])
    assert np.isnan(got[:2]).all()
    assert got[2] == pytest.approx(1.5)
