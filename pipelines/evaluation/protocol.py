"""Anytime and budgeted-batch evaluation, exactly as `docs/protocol.md` defines them.

The budgeted protocol (MSDNet's dynamic evaluation) fits one threshold per exit on
val so that target proportions of samples leave at each exit, then applies the
thresholds on test. `fit_thresholds` / `assign_exits` are vectorised over samples
and over the budget values; `fit_thresholds_reference` / `assign_exits_reference`
are the loop definition written literally from the spec. They are the executable
contract: the vectorised versions must return identical thresholds and exits,
ties included (tests and `benchmarks/eval_speed.py` check this).

Everything here is pure NumPy on arrays of the outputs file (docs/protocol.md keys):
logits K×N×C, labels N, flops K (cumulative MFLOPs), scores K×N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

#: The budget indices of the protocol: q = p / 20 for p = 1 … 39.
P_VALUES: tuple[int, ...] = tuple(range(1, 40))

#: Separator of the `exit_fractions` column (a CSV-safe string, see `format_exit_fractions`).
FRACTION_SEPARATOR = ";"


# --------------------------------------------------------------------------- scores


def softmax_confidence(logits: np.ndarray) -> np.ndarray:
    """Max softmax probability per exit and sample (K×N×C → K×N), the default exit score.

    Computed in float64 as 1 / Σ_c exp(z_c − max z), which is stable for any logit
    scale and bit-identical to the `max_softmax` exit policy (max/sum with max = 1).
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"logits must be K×N×C, got shape {z.shape}")
    shifted = z - z.max(axis=-1, keepdims=True)
    return 1.0 / np.exp(shifted).sum(axis=-1)


# --------------------------------------------------------------------------- proportions


def exit_proportions(q: float, num_exits: int) -> np.ndarray:
    """Target exit proportions prop[k] = q^(k+1) / Σ_j q^(j+1), k = 0 … K−1.

    q < 1 favours early exits, q > 1 late ones, q = 1 is uniform.
    """
    if q <= 0:
        raise ValueError(f"q must be positive, got {q}")
    if num_exits < 1:
        raise ValueError(f"num_exits must be >= 1, got {num_exits}")
    weights = float(q) ** np.arange(1, num_exits + 1, dtype=np.float64)
    return weights / weights.sum()


def budget_proportions(num_exits: int, p_values: Sequence[int] = P_VALUES) -> np.ndarray:
    """Target proportions for every budget index p (q = p / 20), shape (P, K)."""
    return np.stack([exit_proportions(p / 20, num_exits) for p in p_values])


# --------------------------------------------------------------------------- thresholds


def _check_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as float64 K×N; finite, because ±inf would collide with the ±inf thresholds."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 1 or s.shape[1] < 1:
        raise ValueError(f"scores must be K×N with K, N >= 1, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (no NaN or ±inf)")
    return s


def _check_thresholds(thresholds: np.ndarray, num_exits: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != num_exits:
        raise ValueError(f"thresholds must be (P, {num_exits}), got shape {t.shape}")
    return t


def _check_proportions(proportions: np.ndarray, num_exits: int) -> np.ndarray:
    props = np.asarray(proportions, dtype=np.float64)
    if props.ndim != 2 or props.shape[1] != num_exits:
        raise ValueError(f"proportions must be (P, {num_exits}), got shape {props.shape}")
    if not (np.isfinite(props).all() and (props >= 0).all()):
        raise ValueError("proportions must be finite and non-negative")
    return props


def exit_counts(n: int, proportions: np.ndarray) -> np.ndarray:
    """n_k = floor(n·prop_k) samples per exit (any shape of proportions), in float64: the
    same float operations as `fit_thresholds_reference`, so every fit agrees on them."""
    return np.floor(n * np.asarray(proportions, dtype=np.float64)).astype(np.int64)


def fit_thresholds(val_scores: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """Per-exit thresholds (P, K) fitted on val scores (K×N) for each row of proportions (P, K).

    docs/protocol.md step 2, vectorised over samples and budgets (loop over exits only).
    For exit k the scores are sorted once; the not-yet-assigned masks of all budgets,
    put in that order and flattened, give the positions of the remaining samples, so
    the n_k-th remaining one of budget p is a single lookup; its score is T[k].
    T[k] = +inf when n_k = 0 or fewer than n_k samples remain; T[K−1] = −inf.
    The n_k-th largest remaining score does not depend on how ties are ordered, so
    an unstable sort gives exactly `fit_thresholds_reference`.
    """
    scores = _check_scores(val_scores)
    num_exits, n = scores.shape
    props = _check_proportions(proportions, num_exits)
    counts = exit_counts(n, props)  # n_k per budget
    thresholds = np.full(props.shape, np.inf)
    thresholds[:, -1] = -np.inf
    remaining = np.ones((props.shape[0], n), dtype=bool)
    row_starts = np.arange(props.shape[0] + 1) * n
    for k in range(num_exits - 1):
        order = np.argsort(scores[k])[::-1]  # descending
        found = np.flatnonzero(np.take(remaining, order, axis=1))  # row-major: budget, rank
        bounds = np.searchsorted(found, row_starts)  # where each budget's entries begin
        first, num_remaining = bounds[:-1], np.diff(bounds)
        n_k = counts[:, k]
        reach = np.flatnonzero((n_k > 0) & (num_remaining >= n_k))
        rank = found[first[reach] + n_k[reach] - 1] - reach * n  # n_k-th remaining, sorted
        thresholds[reach, k] = scores[k, order[rank]]
        remaining &= scores[k][None, :] < thresholds[:, k : k + 1]
    return thresholds


def assign_exits(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Exit index (P, N) of each sample: the first k with score[k] >= T[k].

    The last exit takes every sample left, whatever T[K−1] is (it is −inf when fitted).
    Counting the exits a sample has passed without leaving is several times faster
    than boolean-mask assignment.
    """
    s = _check_scores(scores)
    num_exits = s.shape[0]
    t = _check_thresholds(thresholds, num_exits)
    staying = np.ones((t.shape[0], s.shape[1]), dtype=bool)
    exits = np.zeros(staying.shape, dtype=np.min_scalar_type(num_exits))
    for k in range(num_exits - 1):
        staying &= s[k][None, :] < t[:, k : k + 1]
        exits += staying
    return exits.astype(np.int64)


def fit_thresholds_reference(val_scores: np.ndarray, proportions: np.ndarray) -> np.ndarray:
    """Loop definition of `fit_thresholds`, written literally from docs/protocol.md step 2."""
    scores = _check_scores(val_scores)
    num_exits, n = scores.shape
    props = _check_proportions(proportions, num_exits)
    rows = scores.tolist()
    thresholds = np.empty(props.shape)
    for p, prop in enumerate(props.tolist()):
        assigned = [False] * n
        for k in range(num_exits - 1):
            n_k = math.floor(n * prop[k])
            threshold = math.inf
            if n_k > 0:
                seen = 0
                for i in sorted(range(n), key=lambda i, k=k: rows[k][i], reverse=True):
                    if not assigned[i]:
                        seen += 1
                        if seen == n_k:
                            threshold = rows[k][i]
                            break
            thresholds[p, k] = threshold
            for i in range(n):
                if not assigned[i] and rows[k][i] >= threshold:
                    assigned[i] = True
        thresholds[p, num_exits - 1] = -math.inf
    return thresholds


def assign_exits_reference(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Loop definition of `assign_exits` (docs/protocol.md step 3)."""
    s = _check_scores(scores)
    num_exits, n = s.shape
    t = _check_thresholds(thresholds, num_exits)
    rows = s.tolist()
    exits = np.empty((t.shape[0], n), dtype=np.int64)
    for p, thr in enumerate(t.tolist()):
        for i in range(n):
            k = 0
            while k < num_exits - 1 and not rows[k][i] >= thr[k]:
                k += 1
            exits[p, i] = k
    return exits


# --------------------------------------------------------------------------- curves


def format_exit_fractions(fractions: np.ndarray) -> str:
    """Exit fractions as one CSV-safe string, "f_1;f_2;…;f_K" (shortest exact float repr)."""
    return FRACTION_SEPARATOR.join(repr(float(f)) for f in fractions)


def parse_exit_fractions(text: str) -> np.ndarray:
    """Inverse of `format_exit_fractions`."""
    return np.array([float(f) for f in text.split(FRACTION_SEPARATOR)])


def _check_flops(flops: np.ndarray, num_exits: int) -> np.ndarray:
    f = np.asarray(flops, dtype=np.float64)
    if f.shape != (num_exits,):
        raise ValueError(f"flops must have shape ({num_exits},), got {f.shape}")
    return f


def budgeted_thresholds(val_scores: np.ndarray, p_values: Sequence[int] = P_VALUES) -> np.ndarray:
    """Thresholds (P, K) of the budgeted protocol for each budget index p (q = p / 20)."""
    scores = _check_scores(val_scores)
    return fit_thresholds(scores, budget_proportions(scores.shape[0], p_values))


def budgeted_curve(
    val_scores: np.ndarray,
    test_scores: np.ndarray,
    test_correct: np.ndarray,
    flops: np.ndarray,
    p_values: Sequence[int] = P_VALUES,
) -> pd.DataFrame:
    """Budgeted-batch curve: one row per p with columns p, q, mflops, top1, exit_fractions.

    Thresholds are fitted on `val_scores` (K×N_val) only and applied to `test_scores`
    (K×N_test); `test_correct` (K×N_test bool) says whether exit k classifies test
    sample i correctly. top1 is in percent over all test samples; mflops is the
    expected cost Σ_k frac_k · flops[k] (MFLOPs per image); exit_fractions is the
    realised frac_k as "f_1;…;f_K" (`parse_exit_fractions` reads it back).
    """
    scores = _check_scores(test_scores)
    val = _check_scores(val_scores)
    if val.shape[0] != scores.shape[0]:
        raise ValueError(f"val_scores has {val.shape[0]} exits, test_scores {scores.shape[0]}")
    rows = thresholded_rows(scores, test_correct, flops, budgeted_thresholds(val, p_values))
    rows.insert(0, "q", np.asarray(p_values, dtype=np.float64) / 20)
    rows.insert(0, "p", np.asarray(p_values, dtype=np.int64))
    return rows


def thresholded_rows(
    test_scores: np.ndarray, test_correct: np.ndarray, flops: np.ndarray, thresholds: np.ndarray
) -> pd.DataFrame:
    """Test rows of fitted thresholds (P, K): columns mflops, top1, exit_fractions.

    docs/protocol.md step 3 for any exit rule: the exits of `assign_exits`, top-1 over all test
    samples, and the expected cost Σ_k frac_k · flops[k].
    """
    scores = _check_scores(test_scores)
    num_exits, n = scores.shape
    correct = np.asarray(test_correct, dtype=bool)
    if correct.shape != scores.shape:
        raise ValueError(f"test_correct shape {correct.shape} != test_scores {scores.shape}")
    cost = _check_flops(flops, num_exits)
    exits = assign_exits(scores, thresholds)  # P×N
    fractions = np.stack([np.bincount(row, minlength=num_exits) for row in exits]) / n
    top1 = 100.0 * correct[exits, np.arange(n)[None, :]].mean(axis=1)
    return pd.DataFrame(
        {
            "mflops": fractions @ cost,
            "top1": top1,
            "exit_fractions": [format_exit_fractions(f) for f in fractions],
        }
    )


def _check_logits(logits: np.ndarray, labels: np.ndarray, split: str) -> tuple[np.ndarray, ...]:
    z = np.asarray(logits)
    y = np.asarray(labels)
    if z.ndim != 3 or y.shape != (z.shape[1],):
        raise ValueError(f"{split}: logits must be K×N×C and labels N, got {z.shape}, {y.shape}")
    return z, y


def budgeted_from_logits(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    flops: np.ndarray,
    val_scores: np.ndarray | None = None,
    test_scores: np.ndarray | None = None,
    p_values: Sequence[int] = P_VALUES,
) -> pd.DataFrame:
    """`budgeted_curve` from an outputs file's arrays.

    Exit scores are the given `val_scores`/`test_scores` (the `score` policy) or,
    when both are None, the max softmax of the logits (`max_softmax`, the default).
    Test predictions are the per-exit argmax of `test_logits`. `val_labels` is only
    checked for shape: thresholds depend on val scores, not on val correctness.
    """
    val_z, _ = _check_logits(val_logits, val_labels, "val")
    test_z, test_y = _check_logits(test_logits, test_labels, "test")
    if (val_scores is None) != (test_scores is None):
        raise ValueError("give both val_scores and test_scores, or neither")
    if val_scores is None:
        val_scores, test_scores = softmax_confidence(val_z), softmax_confidence(test_z)
    if np.shape(val_scores) != val_z.shape[:2] or np.shape(test_scores) != test_z.shape[:2]:
        raise ValueError("scores must be K×N, matching the logits of the same split")
    correct = test_z.argmax(axis=-1) == test_y[None, :]
    return budgeted_curve(val_scores, test_scores, correct, flops, p_values)


def anytime_curve(
    test_logits: np.ndarray, test_labels: np.ndarray, flops: np.ndarray
) -> pd.DataFrame:
    """Anytime curve: top-1 (percent) of every exit on the whole test set vs its cost.

    Columns exit (1-based), mflops (cumulative cost of that exit), top1.
    """
    z, y = _check_logits(test_logits, test_labels, "test")
    cost = _check_flops(flops, z.shape[0])
    top1 = 100.0 * (z.argmax(axis=-1) == y[None, :]).mean(axis=1)
    return pd.DataFrame({"exit": np.arange(1, z.shape[0] + 1), "mflops": cost, "top1": top1})


def accuracy_at_budget(
    curve_mflops: np.ndarray, curve_top1: np.ndarray, budgets: np.ndarray | Sequence[float]
) -> np.ndarray:
    """Top-1 at each budget, by linear interpolation in cost between neighbouring curve points.

    Points are sorted by cost; points with identical cost are merged into one whose
    top1 is their mean (order-independent). A budget outside [min cost, max cost]
    gives NaN: the curve is never extrapolated. Budgets on a point give its top1.
    """
    cost = np.asarray(curve_mflops, dtype=np.float64)
    acc = np.asarray(curve_top1, dtype=np.float64)
    if cost.ndim != 1 or cost.shape != acc.shape or cost.size == 0:
        raise ValueError(
            f"curve must be two equal-length 1-D arrays, got {cost.shape}, {acc.shape}"
        )
    unique_cost, group = np.unique(cost, return_inverse=True)
    mean_acc = np.bincount(group, weights=acc) / np.bincount(group)
    b = np.asarray(budgets, dtype=np.float64)
    inside = (b >= unique_cost[0]) & (b <= unique_cost[-1])
    return np.where(inside, np.interp(b, unique_cost, mean_acc), np.nan)
