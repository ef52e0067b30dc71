"""The paper's claims on constructed studies: the verdict rule, the aggregation of points,
matched budgets, cost ratios, and claims.csv built from per-sample outputs written by hand
(supported, contradicted, inconclusive, not run), covering every claim of the paper."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from eebench.methods.base import MAX_SOFTMAX, OWN_SCORE
from eebench.pipelines.claims import (
    CLAIM_COLUMNS,
    CONTRADICTED,
    INCONCLUSIVE,
    NOT_RUN,
    SUPPORTED,
    aggregate,
    build_claims,
    interpolation_weights,
    paper_claims,
    reach_cost,
    verdict,
)
from eebench.pipelines.config import RunSpec, expand_runs
from eebench.pipelines.outputs import (
    OUTPUTS_FILE,
    ExitDecision,
    RunOutputs,
    SplitOutputs,
    write_decisions,
    write_outputs,
)
from eebench.pipelines.protocol import accuracy_at_budget
from eebench.pipelines.tables import load_results, read_table

REPO = Path(__file__).resolve().parents[2]
N_TEST = 200
#: Top-1 (%) at the first exit of each fake run setting; +2 points per later exit.
BASE_TOP1 = {"standard": 50.0, "joint_bilevel": 60.0, "joint_bilevel-frozen": 55.0}
TABLE1_TOP1 = {"joint_bilevel-confidence": 52.0, "joint_bilevel-margin+entropy": 54.0}


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("low", "high", "expect", "margin", "expected"),
    [
        (0.1, 2.0, ">", math.nan, SUPPORTED),
        (-2.0, -0.1, ">", math.nan, CONTRADICTED),
        (-0.5, 1.0, ">", math.nan, INCONCLUSIVE),
        (-2.0, -0.1, "<", math.nan, SUPPORTED),
        (0.1, 2.0, "<", math.nan, CONTRADICTED),
        (0.05, 0.4, "~", 0.5, SUPPORTED),  # |·| surely below the margin
        (0.6, 1.2, "~", 0.5, CONTRADICTED),
        (0.3, 0.7, "~", 0.5, INCONCLUSIVE),
        (math.nan, math.nan, ">", math.nan, INCONCLUSIVE),
    ],
)
def test_verdict_is_where_the_interval_lies(
    low: float, high: float, expect: str, margin: float, expected: str
) -> None:
    assert verdict(low, high, expect, 0.0, margin) == expected


def test_verdict_of_a_ratio_is_judged_against_one() -> None:
    assert verdict(1.1, 1.5, ">", 1.0, math.nan) == SUPPORTED
    assert verdict(0.5, 0.9, ">", 1.0, math.nan) == CONTRADICTED
    assert verdict(0.9, 1.1, ">", 1.0, math.nan) == INCONCLUSIVE


def test_aggregate_takes_the_point_least_favourable_to_the_claim() -> None:
    values = np.array([[3.0, -1.0, 2.0, 0.5], [1.0, 2.0, 3.0, 4.0]])
    every, index = aggregate(values, "every", ">")
    assert every.tolist() == [-1.0, 1.0] and index.tolist() == [1, 0]
    assert aggregate(values, "all_but_one", ">")[0].tolist() == [0.5, 2.0]
    assert aggregate(values, "every", "<")[0].tolist() == [3.0, 4.0]
    assert aggregate(values, "every", "~")[0].tolist() == [3.0, 4.0]  # largest |·|
    mean, index = aggregate(values, "mean", ">")
    assert mean.tolist() == [1.125, 2.5] and index.tolist() == [-1, -1]
    assert aggregate(-values, "mean", "~")[0].tolist() == [1.125, 2.5]  # |mean|


def test_interpolation_weights_reproduce_top1_at_budget() -> None:
    rng = np.random.default_rng(0)
    costs = np.array([10.0, 20.0, 20.0, 35.0, 50.0, 42.0])  # a tie and an unsorted point
    budgets = np.array([5.0, 10.0, 15.0, 20.0, 38.0, 50.0, 60.0])
    weights = interpolation_weights(costs, budgets)
    for _ in range(3):
        top1 = rng.uniform(40, 90, size=len(costs))
        expected = accuracy_at_budget(costs, top1, budgets)
        np.testing.assert_allclose(weights @ top1, expected)  # NaN outside the cost range


def test_reach_cost_interpolates_the_first_crossing() -> None:
    top1 = np.array([[50.0, 60.0, 70.0, 65.0], [50.0, 60.0, 70.0, 65.0], [80.0, 81.0, 82.0, 83.0]])
    costs = np.array([[10.0, 20.0, 30.0, 40.0]] * 3)
    reached = reach_cost(top1, costs, np.array([65.0, 75.0, 70.0]))
    assert reached[0] == pytest.approx(25.0)  # halfway from 60 to 70
    assert reached[1] == np.inf  # never reaches 75
    assert reached[2] == 10.0  # its first point already does


# --------------------------------------------------------------------------- claims.csv


def _base(spec: RunSpec) -> float:
    return {**BASE_TOP1, **TABLE1_TOP1}.get(spec.path.split("/")[3], BASE_TOP1["standard"])


def write_samples(
    root: Path, spec: RunSpec, first: float, shift: int = 0, points: int | None = None
) -> None:
    """outputs.npz and exit_rules.json of a fake run: exit k is right on the round(N·(first
    + 2k + seed)/100) test samples from index `shift` on (cyclically), and operating point j
    of both rules sends every sample to exit j (so budgeted points lie at the exits' costs;
    `points`: only the first ones)."""
    run_dir = root / spec.path
    flops = pd.read_csv(run_dir / "anytime.csv")["mflops"].to_numpy()
    exits = len(flops)
    counts = [round(N_TEST * (first + 2 * k + spec.seed) / 100) for k in range(exits)]
    order = (np.arange(N_TEST) - shift) % N_TEST
    correct = np.stack([order < count for count in counts])
    logits = np.where(correct[..., None], [3.0, 0.0], [0.0, 3.0]).astype(np.float32)
    split = SplitOutputs(logits, np.zeros(N_TEST, dtype=np.int64))
    write_outputs(run_dir, RunOutputs(split, split, flops))
    decisions = [
        ExitDecision(
            rule,
            j + 1,
            math.nan,
            MAX_SOFTMAX,
            tuple(math.inf if k < j else -math.inf for k in range(exits)),
        )
        for rule in (MAX_SOFTMAX, OWN_SCORE)
        for j in range(points or exits)
    ]
    write_decisions(run_dir, decisions)


@pytest.fixture
def claims_of(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> Callable[..., pd.DataFrame]:
    """claims(joint_shift, joint_offset, seeds): claims.csv of the fake study whose runs all
    have per-sample outputs; joint_bilevel's samples are shifted and its top-1 moved."""

    def claims(shift: int = 0, offset: float = 0.0, seeds: tuple[int, ...] = (0, 1)) -> Any:
        study = make_study()
        study["seeds"] = list(seeds)
        root = make_results(study)
        for spec in expand_runs(study):
            joint = spec.method_dir == "joint_bilevel"
            write_samples(root, spec, _base(spec) + (offset if joint else 0.0), shift * joint)
        results = load_results(study, root)
        return build_claims(study, results, root).set_index(["id", "backbone"])

    return claims


def test_claims_table_covers_every_claim_of_the_paper(claims_of: Callable[..., Any]) -> None:
    claims = claims_of().reset_index()
    assert sorted(claims.columns) == sorted(CLAIM_COLUMNS)
    assert list(dict.fromkeys(claims["id"])) == [f"C{k}" for k in range(1, 17)]
    assert set(claims["verdict"]) <= {SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN}
    # A claim about methods is tested on each backbone of the dataset standing in for the
    # paper's; C3 compares two backbones (one row); no cifar10 / imagenet in this study.
    rows = claims.groupby("id").size()
    assert rows["C1"] == rows["C12"] == 2 and rows["C3"] == 1
    not_run = claims.set_index("id")
    assert not_run.loc["C2", "note"] == "no cifar10 or stand-in dataset in this study"
    assert set(not_run.loc[["C9", "C10", "C11"], "verdict"]) == {NOT_RUN}  # no post-hoc runs
    assert "no calibrated_dnn run on cifar100/msdnet_cifar" in set(not_run.loc["C9", "note"])


def test_paper_claims_copy_keeps_the_shared_columns() -> None:
    shared = REPO.parent / "shared" / "reference" / "paper_claims.csv"
    if not shared.is_file():
        pytest.skip("no shared/reference/paper_claims.csv beside this checkout")
    original = pd.read_csv(shared, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(paper_claims()[list(original.columns)], original)


def test_better_method_on_the_same_samples_is_supported(claims_of: Callable[..., Any]) -> None:
    claims = claims_of()
    c1 = claims.loc[("C1", "msdnet_cifar")]
    assert c1["verdict"] == SUPPORTED
    assert c1["estimate"] == pytest.approx(10.0)  # 60 vs 50 % at every exit
    assert c1["ci_low"] > 0 and c1["points"] == "exit 1, exit 2, exit 3, exit 4, exit 5"
    assert c1["seeds"] == 2 and "× 2 seeds" in c1["ci_method"]
    assert np.isnan(c1["t_low"])  # fewer than 3 seeds
    c3 = claims.loc[("C3", "msdnet_cifar vs ranet_cifar")]
    assert c3["verdict"] == SUPPORTED and c3["points"].endswith("exit 4")  # common exits
    # Budgeted: at the Table 1 budgets inside both curves (5 MFLOPs is below them).
    c6 = claims.loc[("C6", "msdnet_cifar")]
    assert c6["points"] == "30 MFLOPs, 50 MFLOPs, 70 MFLOPs, 90 MFLOPs"
    assert c6["estimate"] == pytest.approx(5.0) and c6["verdict"] == SUPPORTED
    c7 = claims.loc[("C7", "msdnet_cifar")]  # confidence+entropy (60) vs the other rows
    assert c7["estimate"] == pytest.approx(6.0)  # vs margin+entropy (54)
    assert c7["at"].startswith("joint_bilevel-margin+entropy at ")
    c8 = claims.loc[("C8", "msdnet_cifar")]  # mean(60, 54) − 52: with entropy − without
    assert c8["estimate"] == pytest.approx(5.0) and c8["verdict"] == SUPPORTED
    # Standard's peak (58 % at 137 MFLOPs) is reached by Ours at its first exit (10 MFLOPs).
    c5 = claims.loc[("C5", "msdnet_cifar")]
    assert c5["estimate"] == pytest.approx(13.7) and c5["verdict"] == SUPPORTED
    assert claims.loc[("C4", "msdnet_cifar"), "against"] == "standard"  # not itself


def test_worse_method_is_contradicted(claims_of: Callable[..., Any]) -> None:
    claims = claims_of(offset=-20.0)  # Ours at 40 %: 10 points below standard
    assert claims.loc[("C1", "msdnet_cifar"), "estimate"] == pytest.approx(-10.0)
    assert claims.loc[("C1", "msdnet_cifar"), "verdict"] == CONTRADICTED
    assert claims.loc[("C12", "ranet_cifar"), "verdict"] == CONTRADICTED


def test_equal_top1_on_other_samples_is_inconclusive(claims_of: Callable[..., Any]) -> None:
    """Same accuracy as standard, on the other half of the test set: paired differences
    of ±1 per sample, whose mean could be either sign."""
    claims = claims_of(shift=N_TEST // 2, offset=-10.0, seeds=(0,))
    c1 = claims.loc[("C1", "msdnet_cifar")]
    assert c1["estimate"] == pytest.approx(0.0, abs=1e-9)
    assert c1["ci_low"] < 0 < c1["ci_high"] and c1["verdict"] == INCONCLUSIVE
    assert c1["ci_method"].endswith("(one seed)")


def test_three_seeds_add_the_t_interval_and_draws_are_reproducible(
    claims_of: Callable[..., Any],
) -> None:
    first, again = claims_of(seeds=(0, 1, 2)), claims_of(seeds=(0, 1, 2))
    pd.testing.assert_frame_equal(first, again)
    c1 = first.loc[("C1", "msdnet_cifar")]
    assert c1["t_low"] == pytest.approx(10.0) == c1["t_high"]  # the same +10 on every seed


def test_missing_per_sample_outputs_say_not_run(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> None:
    study = make_study()
    root = make_results(study)
    for spec in expand_runs(study):
        write_samples(root, spec, _base(spec))
    (root / "runs/cifar100/msdnet_cifar/standard/seed1" / OUTPUTS_FILE).unlink()
    claims = build_claims(study, load_results(study, root), root).set_index(["id", "backbone"])
    c1 = claims.loc[("C1", "msdnet_cifar")]
    assert c1["verdict"] == NOT_RUN
    assert c1["note"].startswith("per-sample outputs missing, e.g. runs/cifar100/msdnet_cifar")
    assert claims.loc[("C1", "ranet_cifar"), "verdict"] == SUPPORTED


def test_tables_write_claims_csv(study: dict[str, Any], results_root: Path) -> None:
    from eebench.pipelines.tables import build_tables

    build_tables(study, results_root)  # the fake runs have no per-sample outputs
    claims = read_table(results_root / "tables" / "claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS
    assert set(claims["verdict"]) == {NOT_RUN}


def test_a_budget_outside_one_curve_is_left_out_of_that_pair_only(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> None:
    """margin+entropy's budgeted curve stops at 60 MFLOPs (its first 3 exits): C7 compares
    it at 30 and 50 MFLOPs, and the confidence row at every budget."""
    study = make_study()
    root = make_results(study)
    for spec in expand_runs(study):
        short = spec.method_dir == "joint_bilevel-margin+entropy"
        write_samples(root, spec, _base(spec), points=3 if short else None)
    claims = build_claims(study, load_results(study, root), root).set_index(["id", "backbone"])
    c7 = claims.loc[("C7", "msdnet_cifar")]
    assert c7["points"] == "30 MFLOPs, 50 MFLOPs, 70 MFLOPs, 90 MFLOPs"
    assert c7["estimate"] == pytest.approx(6.0) and c7["verdict"] == SUPPORTED
    assert c7["at"] in {f"joint_bilevel-margin+entropy at {b} MFLOPs" for b in (30, 50)}
