"""`eebench verify --tables-from`: two result folders of the same fake study compared point
by point; identical tables agree, a number moved beyond its tolerance (seed spread, or the
binomial interval for one seed) or a missing row disagrees, and the message names them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from eebench.pipelines.cli import main
from eebench.pipelines.stats import Z, binomial_se
from eebench.pipelines.tables import TABLE_FILES, build_tables, read_table
from eebench.pipelines.verify import compare_tables

Studies = tuple[dict[str, Any], Path, Path]


@pytest.fixture
def two_studies(
    make_study: Callable[..., dict[str, Any]], make_results: Callable[[dict[str, Any]], Path]
) -> Callable[[list[int]], Studies]:
    """(study, committed root, regenerated root): the same fake study built twice."""

    def build(seeds: list[int]) -> Studies:
        study = make_study()
        study["seeds"] = seeds
        roots = [make_results(study), make_results(study)]
        for root in roots:
            build_tables(study, root)
        return study, *roots

    return build


def edit(root: Path, table: str, row: int, column: str, delta: float) -> float:
    """Move one number of a table; returns its old value."""
    path = root / "tables" / table
    frame = read_table(path)
    old = float(frame.loc[row, column])
    frame.loc[row, column] = old + delta
    frame.to_csv(path, index=False)
    return old


def reports_of(study: dict[str, Any], committed: Path, regenerated: Path) -> dict[str, Any]:
    reports = compare_tables(study, committed / "tables", regenerated / "tables")
    return {report.name: report for report in reports}


def test_identical_tables_agree(two_studies: Callable[[list[int]], Studies]) -> None:
    reports = reports_of(*two_studies([0, 1]))
    assert list(reports) == list(TABLE_FILES)
    assert all(not report.problems for report in reports.values())
    assert reports["table1.csv"].agree == 30  # 3 feature sets × 2 seeds × 5 budgets


def test_a_number_beyond_the_seed_spread_disagrees(
    two_studies: Callable[[list[int]], Studies],
) -> None:
    """table1 row 0 (confidence+entropy, seed 0, 5 MFLOPs) is NaN: row 1 is at 30 MFLOPs,
    whose two seeds differ by 1 point: std √0.5, tolerance 1.96·√2·√0.5 = 1.96."""
    study, committed, regenerated = two_studies([0, 1])
    old = edit(regenerated, "table1.csv", 1, "top1", 1.9)
    assert not reports_of(study, committed, regenerated)["table1.csv"].problems
    edit(regenerated, "table1.csv", 1, "top1", 0.2)
    (problem,) = reports_of(study, committed, regenerated)["table1.csv"].problems
    assert problem == (
        "dataset=cifar100 backbone=msdnet_cifar features=confidence+entropy seed=0 "
        f"budget_mflops=30.0: top1 {old:.6g} (committed) vs {old + 2.1:.6g} (new), "
        f"|Δ| {2.1:.4g} > tolerance {Z * np.sqrt(2) * np.sqrt(0.5):.4g}"
    )


def test_one_seed_is_judged_by_the_binomial_interval(
    two_studies: Callable[[list[int]], Studies],
) -> None:
    study, committed, regenerated = two_studies([0])
    old = edit(regenerated, "anytime.csv", 0, "top1", 1.0)
    tolerance = Z * np.sqrt(2) * binomial_se(old, 10_000)  # about 1.37 points at 60 %
    assert 1.0 < tolerance < 2.0
    assert not reports_of(study, committed, regenerated)["anytime.csv"].problems
    edit(regenerated, "anytime.csv", 0, "top1", 1.0)
    (problem,) = reports_of(study, committed, regenerated)["anytime.csv"].problems
    assert problem.startswith("dataset=cifar100 backbone=msdnet_cifar method=standard")
    assert f"top1 {old:.6g} (committed) vs {old + 2:.6g} (new)" in problem
    # Exact columns: the cost of an exit is the config's, not a measurement.
    edit(regenerated, "anytime.csv", 1, "mflops", 1e-3)
    problems = reports_of(study, committed, regenerated)["anytime.csv"].problems
    assert any("mflops 30.0 (committed) vs 30.001 (new)" in p for p in problems)


def test_rows_on_one_side_only_and_missing_tables_disagree(
    two_studies: Callable[[list[int]], Studies],
) -> None:
    study, committed, regenerated = two_studies([0])
    path = regenerated / "tables" / "runs.csv"
    read_table(path).iloc[1:].to_csv(path, index=False)
    (committed / "tables" / "claims.csv").unlink()
    reports = reports_of(study, committed, regenerated)
    assert reports["runs.csv"].problems == [
        "dataset=cifar100 backbone=msdnet_cifar method=standard variant= seed=0: "
        "only in the committed table"
    ]
    assert reports["claims.csv"].problems == ["missing in the committed tables"]


def test_cli_exit_status_and_output(
    two_studies: Callable[[list[int]], Studies],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study, committed, regenerated = two_studies([0, 1])
    config = tmp_path / "fake.yaml"
    config.write_text(yaml.safe_dump(study))
    args = ["verify", "--study", str(config), "--results", str(committed)]
    assert main([*args, "--tables-from", str(regenerated)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("; all agree")
    edit(regenerated, "table1_summary.csv", 1, "top1_mean", 30.0)
    assert main([*args, "--tables-from", str(regenerated)]) == 1
    out = capsys.readouterr().out
    assert "DISAGREE  table1_summary.csv" in out
    assert out.splitlines()[-1].endswith("1 disagree (table1_summary.csv)")
