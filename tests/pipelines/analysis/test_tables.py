"""build_tables on fake per-run results: protocol columns, row counts, Table 1 interpolation
checked by hand, mean ± std summaries and the comparison with the paper's numbers."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from eebench.pipelines.analysis.stats import BINOMIAL, T_INTERVAL, wilson_interval
from eebench.pipelines.analysis.tables import (
    CALIBRATION_BIN_COLUMNS,
    CALIBRATION_COLUMNS,
    COLUMNS,
    TABLE_FILES,
    build_tables,
    load_results,
    paper_reported,
    read_table,
)
from eebench.pipelines.evaluation.outputs import RunOutputs, SplitOutputs, write_outputs
from eebench.pipelines.evaluation.reliability import bin_index, ece, nll, reliability_bins
from eebench.pipelines.workflow.config import ConfigError


@pytest.fixture
def tables(study: dict[str, Any], results_root: Path) -> dict[str, pd.DataFrame]:
    paths = build_tables(study, results_root)
    assert [p.name for p in paths] == list(TABLE_FILES)
    return {p.stem: read_table(p) for p in paths}


def test_tidy_tables_have_exactly_the_protocol_columns(tables: dict[str, pd.DataFrame]) -> None:
    for kind in ("anytime", "budgeted", "table1"):
        assert list(tables[kind].columns) == COLUMNS[kind]


def test_row_counts_one_row_per_seed(tables: dict[str, pd.DataFrame]) -> None:
    # MSDNet (5 exits): standard, joint_bilevel, frozen, 2 feature subsets; RANet (4 exits):
    # the first three; 2 seeds each. joint_bilevel runs have two exit policies.
    assert len(tables["runs"]) == 16
    assert len(tables["anytime"]) == 2 * (5 * 5 + 3 * 4)
    assert len(tables["budgeted"]) == 39 * (4 * 1 + 12 * 2)
    assert len(tables["table1"]) == 3 * 2 * 5  # 3 feature sets × 2 seeds × 5 budgets


def test_default_variant_reads_back_as_empty_string(tables: dict[str, pd.DataFrame]) -> None:
    variants = set(tables["anytime"]["variant"])
    assert variants == {"", "frozen", "confidence", "margin+entropy"}


def test_table1_features_come_from_each_run_config(tables: dict[str, pd.DataFrame]) -> None:
    table1 = tables["table1"]
    assert set(table1["features"]) == {"confidence+entropy", "confidence", "margin+entropy"}
    assert set(table1["backbone"]) == {"msdnet_cifar"}  # RANet and frozen runs are left out


def test_table1_interpolates_linearly_between_neighbouring_points(
    tables: dict[str, pd.DataFrame],
) -> None:
    table1 = tables["table1"].set_index(["features", "seed", "budget_mflops"])["top1"]
    # seed 0, features confidence: offset 3; neighbours of 30 MFLOPs are p=6 (28 MFLOPs,
    # 50 + 18/12 + 3 = 54.5) and p=7 (31 MFLOPs, 54.75): 54.5 + (2/3)·0.25.
    assert table1[("confidence", 0, 30.0)] == pytest.approx(54.5 + 2 / 3 * 0.25)
    assert table1[("confidence", 1, 30.0)] == pytest.approx(55.5 + 2 / 3 * 0.25)
    assert np.isnan(table1[("confidence", 0, 5.0)])  # below the curve's cheapest point


def test_summaries_give_mean_and_std_over_seeds(tables: dict[str, pd.DataFrame]) -> None:
    summary = tables["table1_summary"].set_index(["features", "budget_mflops"])
    row = summary.loc[("confidence", 30.0)]
    assert row["top1_mean"] == pytest.approx(55.0 + 2 / 3 * 0.25)
    assert row["top1_std"] == pytest.approx(np.sqrt(0.5))
    assert row["n_seeds"] == 2
    assert summary.loc[("confidence", 5.0), "n_seeds"] == 0
    budgeted = tables["budgeted_summary"]
    assert {"mflops_mean", "mflops_std", "top1_mean", "top1_std", "n_seeds"} <= set(budgeted)
    assert len(budgeted) == len(tables["budgeted"]) // 2
    anytime = tables["anytime_summary"]
    last = anytime[(anytime["backbone"] == "msdnet_cifar") & (anytime["method"] == "standard")]
    assert last["top1_mean"].iloc[-1] == pytest.approx(80.5)


def test_summaries_give_a_t_interval_over_seeds_or_a_binomial_one_for_one_seed(
    tables: dict[str, pd.DataFrame],
    make_study: Callable[..., dict[str, Any]],
    make_results: Callable[[dict[str, Any]], Path],
) -> None:
    row = tables["table1_summary"].set_index(["features", "budget_mflops"]).loc[("confidence", 30)]
    half = 12.706204736 * np.sqrt(0.5) / np.sqrt(2)  # t(0.975, 1 dof) · std / √n
    assert (row["top1_ci_low"], row["top1_ci_high"]) == pytest.approx(
        (row["top1_mean"] - half, row["top1_mean"] + half)
    )
    assert row["ci_method"] == T_INTERVAL
    assert set(tables["runs"]["n_test"]) == {10_000}  # CIFAR-100's test set
    comparison = tables["paper_comparison"].dropna(subset=["ours_top1"])
    assert (comparison["ours_ci_low"] < comparison["ours_top1"]).all()
    study = make_study()
    study["seeds"] = [0]
    root = make_results(study)
    build_tables(study, root)
    one = read_table(root / "tables" / "anytime_summary.csv").iloc[0]
    low, high = wilson_interval(one["top1_mean"], 10_000)
    assert (one["top1_ci_low"], one["top1_ci_high"]) == pytest.approx((low, high))
    assert one["ci_method"] == BINOMIAL and np.isnan(one["top1_std"])


def test_paper_comparison_matches_features_methods_and_budgets(
    tables: dict[str, pd.DataFrame],
) -> None:
    comparison = tables["paper_comparison"]
    assert len(comparison) == len(paper_reported())
    table1 = comparison[comparison["figure"] == "table1"].set_index(["method", "budget_mflops"])
    confidence = table1.loc[("joint_bilevel[confidence]", 30)]
    assert confidence["ours_top1"] == pytest.approx(55.0 + 2 / 3 * 0.25)
    assert confidence["difference"] == pytest.approx(55.0 + 2 / 3 * 0.25 - 70.84)
    assert confidence["ours_seeds"] == 2
    # The default variant counts with its own features (confidence+entropy, offset 2).
    default = table1.loc[("joint_bilevel[confidence+entropy]", 50)]
    assert default["ours_top1"] == pytest.approx(50 + 40 / 12 + 2.5)
    assert (
        "no joint_bilevel[margin] run on msdnet"
        in table1.loc[("joint_bilevel[margin]", 30), "note"]
    )
    last_exit = comparison[(comparison["quantity"] == "top1_last_exit")]
    assert last_exit.set_index("dataset").loc["cifar100", "ours_top1"] == pytest.approx(82.5)
    for dataset in ("cifar10", "imagenet"):
        notes = comparison[comparison["dataset"] == dataset]["note"]
        assert set(notes) == {"no matching dataset in this study"}


def test_paper_comparison_says_no_matching_dataset_for_a_stand_in_study(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> None:
    study = make_study("fashion_mnist")
    root = make_results(study)
    build_tables(study, root)
    comparison = read_table(root / "tables" / "paper_comparison.csv")
    assert set(comparison["note"]) == {"no matching dataset in this study"}
    assert comparison["ours_top1"].isna().all()


def test_budget_fractions_scale_the_last_exit_cost(
    study: dict[str, Any], make_results: Callable[[dict[str, Any]], Path]
) -> None:
    dataset = study["datasets"]["cifar100"]
    del dataset["budgets_mflops"]
    dataset["budget_fractions"] = [0.5]
    root = make_results(study)
    build_tables(study, root)
    table1 = read_table(root / "tables" / "table1.csv")
    assert set(table1["budget_mflops"]) == {68.5}  # 0.5 × 137 MFLOPs


def test_missing_runs_are_an_error_unless_allowed(
    study: dict[str, Any], results_root: Path
) -> None:
    (results_root / "runs/cifar100/ranet_cifar/standard/seed1/budgeted.csv").unlink()
    with pytest.raises(FileNotFoundError, match="1 run files missing"):
        build_tables(study, results_root)
    assert len(load_results(study, results_root, allow_missing=True).runs) == 15


def test_wrong_columns_in_a_run_csv_are_named(study: dict[str, Any], results_root: Path) -> None:
    path = results_root / "runs/cifar100/msdnet_cifar/standard/seed0/anytime.csv"
    read_table(path).rename(columns={"top1": "acc"}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"anytime\.csv: columns"):
        build_tables(study, results_root)


def test_runs_made_under_another_config_never_reach_a_table(
    study: dict[str, Any], results_root: Path
) -> None:
    """The study edited after its runs finished: tables stop and name a stale run."""
    edited = copy.deepcopy(study)
    edited["runs"][0]["recipe_overrides"] = {"lr": 0.05}  # standard only
    with pytest.raises(ConfigError) as error:
        build_tables(edited, results_root)
    message = str(error.value)
    assert message.startswith("4 runs were made under another config than the study's now")
    assert "runs/cifar100/msdnet_cifar/standard/seed0 (recipe.lr: 0.1 -> 0.05)" in message
    assert "rerun the workflow" in message


# --------------------------------------------------------------------------- calibration

#: Two-class predictive of 5 test samples: confidences 0.9, 0.95, 0.7, 0.68, 0.5 fall in
#: bins 13, 14, 10, 10, 7 of 15; accuracies 1, 0, (1 + 0)/2, 1 (a tie predicts class 0).
HAND_PROBS = np.array([[0.9, 0.1], [0.95, 0.05], [0.3, 0.7], [0.68, 0.32], [0.5, 0.5]])
HAND_LABELS = np.array([0, 1, 1, 1, 0])
HAND_ECE = (abs(1 - 0.9) + abs(0 - 0.95) + 2 * abs(0.5 - 0.69) + abs(1 - 0.5)) / 5
HAND_NLL = -np.mean(np.log([0.9, 0.05, 0.7, 0.32, 0.5]))


def test_ece_nll_and_bins_of_a_hand_computed_case() -> None:
    bins = reliability_bins(np.log(HAND_PROBS), HAND_LABELS)
    assert len(bins) == 15 and bins["count"].sum() == 5
    filled = bins[bins["count"] > 0].set_index("bin")
    assert list(filled.index) == [7, 10, 13, 14]
    assert filled.loc[10, "accuracy"] == 0.5
    assert filled.loc[10, "confidence"] == pytest.approx(0.69)
    assert bins["accuracy"].isna().sum() == 11  # empty bins
    assert ece(bins) == pytest.approx(HAND_ECE)  # 0.386
    assert nll(np.log(HAND_PROBS), HAND_LABELS) == pytest.approx(HAND_NLL)
    # Bin b holds (b/15, (b+1)/15]: a confidence on an edge goes to the bin below.
    edges = bin_index(np.array([0.2, 1.0, 1 / 15, 0.07, 0.0]))
    assert edges.tolist() == [2, 14, 0, 1, 0]


def test_calibration_table_reads_logits_and_log_probabilities_and_names_the_source(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> None:
    study = make_study()
    study["runs"].append({"method": "calibrated_dnn", "backbones": ["msdnet_cifar"]})
    root = make_results(study)
    runs = root / "runs/cifar100/msdnet_cifar"
    split = SplitOutputs(np.log(HAND_PROBS)[None].astype(np.float32), HAND_LABELS)
    # A trained run's raw logits (log p + 3: the same softmax), a post-hoc run's log p.
    raw = SplitOutputs(split.logits + 3.0, HAND_LABELS)
    write_outputs(runs / "standard/seed0", RunOutputs(raw, raw, np.array([10.0])))
    write_outputs(runs / "calibrated_dnn/seed0", RunOutputs(split, split, np.array([10.5])))
    build_tables(study, root)
    table = read_table(root / "tables/calibration.csv")
    assert list(table.columns) == CALIBRATION_COLUMNS
    assert len(table) == 2  # the runs without an outputs.npz are left out
    rows = table.set_index("method")
    assert (
        rows.loc["standard", "source"] == "" and rows.loc["calibrated_dnn", "source"] == "standard"
    )
    np.testing.assert_allclose(rows["ece"], 100 * HAND_ECE, rtol=1e-6)
    np.testing.assert_allclose(rows["nll"], HAND_NLL, rtol=1e-6)
    np.testing.assert_allclose(rows["top1"], 60.0)
    assert rows.loc["calibrated_dnn", "mflops"] == 10.5
    bins = read_table(root / "tables/calibration_bins.csv")
    assert list(bins.columns) == CALIBRATION_BIN_COLUMNS and len(bins) == 2 * 15
