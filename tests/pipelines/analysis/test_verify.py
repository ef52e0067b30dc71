"""`eebench verify`: two result folders of a study compared.

- Identity: when every run of both sides recorded the same reproducible mode, every cell
  must be equal (fabricated environment.json files; the mode itself is another issue's).
- Statistics otherwise, on copies of the COMMITTED tables (results/default, results/evidence;
  results/ itself is never touched): each mutation of issue 31 is caught, and an honest
  regeneration agrees. Honest here means values of other trainings of the same runs: the
  evidence study's seeds relabelled (seed 0's values stand in for a regeneration of seed 1,
  and so on), or one seed as the committed one-seed study and another as its regeneration.
  These seeds moved by training noise alone, which is what a regeneration on another machine
  moves by (issue 28); seed noise is, if anything, the larger of the two.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from eebench.pipelines.analysis import verify as verify_module
from eebench.pipelines.analysis.tables import TABLE_FILES, build_tables, read_table
from eebench.pipelines.analysis.verify import (
    compare_identical,
    compare_results,
    compare_tables,
    identity_reason,
    seed_spread,
)
from eebench.pipelines.cli import main
from eebench.pipelines.workflow.config import load_study

REPO = Path(__file__).resolve().parents[3]
Studies = tuple[dict[str, Any], Path, Path]
#: The per-seed tables (a regeneration made of other seeds has no new summaries to compare).
PER_SEED = ("anytime.csv", "budgeted.csv", "table1.csv", "calibration.csv", "runs.csv")
#: Top-1 columns of the suite's own numbers (paper_top1 is the paper's, not ours).
OUR_TOP1 = re.compile(r"^(ours_)?top1(_mean)?$")


# --------------------------------------------------------------------------- fixtures


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


@pytest.fixture
def committed(tmp_path: Path) -> Callable[[str], Studies]:
    """(study, committed root, regenerated root) for a committed study: both copies of its
    tables, under results/<study>/ next to a copy of every other committed study."""

    def copy(name: str) -> Studies:
        for side in ("committed", "regenerated"):
            for other in ("default", "evidence"):
                source = REPO / "results" / other / "tables"
                shutil.copytree(source, tmp_path / side / "results" / other / "tables")
        roots = [tmp_path / side / "results" / name for side in ("committed", "regenerated")]
        return load_study(REPO / "config" / f"{name}.yaml"), *roots

    return copy


def edit_tables(root: Path, change: Callable[[str, pd.DataFrame], bool]) -> None:
    """Rewrite every table that `change` modified in place (it returns whether it did)."""
    for name in TABLE_FILES:
        path = root / "tables" / name
        frame = read_table(path)
        if change(name, frame):
            frame.to_csv(path, index=False)


def shift_top1(delta: float, method: str | None = None) -> Callable[[str, pd.DataFrame], bool]:
    """Every top-1 of the suite moved by `delta` (only `method`'s rows, if given)."""

    def change(_: str, frame: pd.DataFrame) -> bool:
        columns = [column for column in frame.columns if OUR_TOP1.match(column)]
        if method is not None:
            if "method" not in frame:
                return False
            rows = frame["method"].astype(str).str.split("[").str[0] == method
        else:
            rows = pd.Series(True, index=frame.index)
        for column in columns:
            frame.loc[rows, column] += delta
        return bool(columns) and bool(rows.any())

    return change


def set_one(table: str, column: str, value: Callable[[float], float], seed: int = 1):
    """One value of one seed of `table` (its first row of that seed) replaced."""

    def change(name: str, frame: pd.DataFrame) -> bool:
        if name != table:
            return False
        row = frame.index[frame["seed"] == seed][0]
        frame.loc[row, column] = value(float(frame.loc[row, column]))
        return True

    return change


def problems(study: dict[str, Any], old: Path, new: Path, names=TABLE_FILES) -> list[str]:
    reports = compare_tables(study, old / "tables", new / "tables", names)
    return [f"{report.name}: {p}" for report in reports for p in report.problems]


def environment(root: Path, **changes: Any) -> None:
    """An environment.json of the reproducible mode in every run folder of a results root."""
    env = {
        "reproducible": True,
        "mode": "cpu-avx2",
        "torch": "2.5.1",
        "device": "cpu",
        "threads": 1,
        "aten_cpu_capability": "avx2",
        "onednn_max_cpu_isa": "AVX2",
        "mkl_cbwr": "AVX2",
        "cpu_model": "test CPU",
    }
    for seed in (root / "runs").glob("*/*/*/seed*"):
        (seed / "environment.json").write_text(json.dumps(env | changes))


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("study", "mutation", "caught_in"),
    [
        ("default", shift_top1(-1.0), "budgeted.csv: all runs: top1 moved by +1"),
        ("evidence", shift_top1(-1.0), "anytime.csv: all runs: top1 moved by +1"),
        ("evidence", set_one("anytime.csv", "top1", lambda v: v + 10), "|Δ| 10 >"),
        ("evidence", set_one("anytime.csv", "top1", lambda v: 150), "impossible value 150"),
        ("evidence", set_one("anytime.csv", "top1", lambda v: -5), "impossible value -5"),
        ("evidence", set_one("anytime.csv", "top1", lambda v: np.nan), "a NaN faces a number"),
        ("evidence", set_one("budgeted.csv", "mflops", lambda v: -v), "impossible value -"),
        ("evidence", set_one("budgeted.csv", "mflops", lambda v: v + 1), "mflops"),
        ("evidence", set_one("calibration.csv", "ece", lambda v: v + 3), "ece"),
        ("evidence", set_one("calibration.csv", "nll", lambda v: v + 0.2), "nll"),
    ],
)
def test_mutations_of_the_committed_tables_are_caught(
    committed: Callable[[str], Studies], study: str, mutation: Callable, caught_in: str
) -> None:
    """The edit is made to the committed side, the one the tolerances are measured on: a
    +10 on one seed must not widen its own tolerance (it did: the point's std grew), nor
    150 or -5 make it NaN. The old tolerance (1.96·√2 binomial errors or point stds) let all
    of these through but the evidence study's shift."""
    config, old, new = committed(study)
    edit_tables(old, mutation)
    found = problems(config, old, new)
    assert any(caught_in in problem for problem in found), found[:5]


@pytest.mark.parametrize("study", ["default", "evidence"])
def test_an_unchanged_table_agrees(committed: Callable[[str], Studies], study: str) -> None:
    config, old, new = committed(study)
    assert problems(config, old, new) == []


def test_a_regeneration_made_of_other_seeds_agrees(tmp_path: Path) -> None:
    """The evidence study's per-seed tables with every seed's values moved to the next seed:
    each value faces another training of its run. The binomial tolerance of the old verify
    (≈ 1.1 points) failed this regeneration."""
    study = load_study(REPO / "config" / "evidence.yaml")
    old, new = tmp_path / "results" / "evidence", tmp_path / "new"
    shutil.copytree(REPO / "results" / "evidence" / "tables", old / "tables")
    (new / "tables").mkdir(parents=True)
    seeds = len(study["seeds"])
    for name in PER_SEED:
        frame = read_table(old / "tables" / name)
        frame.assign(seed=(frame["seed"] + 1) % seeds).to_csv(new / "tables" / name, index=False)
    assert problems(study, old, new, PER_SEED) == []


@pytest.mark.parametrize(("seed", "again"), [(0, 1), (1, 2), (2, 0)])
def test_a_one_seed_study_regenerated_agrees(tmp_path: Path, seed: int, again: int) -> None:
    """A one-seed study (seed `seed` of the evidence runs) and its regeneration (seed `again`,
    relabelled): the tolerance comes from the committed evidence study's seed spread (it
    sits next to it under results/), and the two agree; the old binomial tolerance failed."""
    study = load_study(REPO / "config" / "evidence.yaml")
    shutil.copytree(REPO / "results" / "evidence" / "tables", tmp_path / "evidence" / "tables")
    for side, kept in (("one", seed), ("two", again)):
        (tmp_path / side / "tables").mkdir(parents=True)
        for name in PER_SEED:
            frame = read_table(REPO / "results" / "evidence" / "tables" / name)
            frame = frame[frame["seed"] == kept].assign(seed=0)
            frame.to_csv(tmp_path / side / "tables" / name, index=False)
    assert problems(study, tmp_path / "one", tmp_path / "two", PER_SEED) == []


def test_without_a_measured_spread_only_equal_values_agree(
    two_studies: Callable[[list[int]], Studies],
) -> None:
    """A one-seed study with no committed study of seeds beside it: nothing measures the
    noise, so a value agrees when equal and a difference is named with the remedy (it was
    judged by the binomial error before)."""
    study, old, new = two_studies([0])
    assert problems(study, old, new) == []
    edit_tables(new, set_one("anytime.csv", "top1", lambda v: v + 0.5, seed=0))
    (problem,) = problems(study, old, new, ("anytime.csv",))
    assert "and no measured spread to judge a difference by: commit a study" in problem


def test_the_spread_is_robust_to_an_edit() -> None:
    """A +10 on one committed value moves the measured spread by less than 5%."""
    frame = read_table(REPO / "results" / "evidence" / "tables" / "anytime.csv")
    check = verify_module.CHECKS["anytime.csv"]
    before = seed_spread(frame, check, "top1")
    frame.loc[frame.index[frame["seed"] == 1][0], "top1"] += 10
    after = seed_spread(frame, check, "top1")
    for where, spread in before.items():
        assert after[where].point <= 1.05 * spread.point, where


def add_column(column: str, values: Callable[[pd.DataFrame], Any]):
    """A column added to calibration.csv (as another issue adds per-budget ECEs)."""

    def change(name: str, frame: pd.DataFrame) -> bool:
        if name == "calibration.csv":
            frame[column] = values(frame)
        return name == "calibration.csv"

    return change


def test_a_new_column_is_judged_by_its_kind(committed: Callable[[str], Studies]) -> None:
    """A column the checks do not name is judged by its own seed spread like any measured
    column, and a column on one side only disagrees."""
    config, old, new = committed("evidence")
    for root in (old, new):
        edit_tables(root, add_column("ece_p5", lambda frame: frame["ece"]))
    edit_tables(new, set_one("calibration.csv", "ece_p5", lambda v: v + 5))
    names = ("calibration.csv",)
    assert any("ece_p5" in p and "|Δ| 5 >" in p for p in problems(config, old, new, names))
    edit_tables(new, add_column("power", lambda frame: 1.0))
    assert "columns power missing in the committed table" in problems(config, old, new, names)[0]


# --------------------------------------------------------------------------- identity


def test_identity_when_both_sides_ran_the_same_reproducible_mode(
    two_studies: Callable[[list[int]], Studies],
) -> None:
    study, old, new = two_studies([0, 1])
    environment(old)
    environment(new, cpu_model="another CPU")
    result = compare_results(study, old, new)
    assert (result.comparison, [r.problems for r in result.reports]) == ("identity", [[]] * 12)
    assert "reproducible mode cpu-avx2, torch 2.5.1, cpu" in result.reason
    path = new / "tables" / "anytime.csv"
    text = path.read_text().splitlines()
    fields = text[1].split(",")
    fields[-1] = f"{float(fields[-1]):.2f}0"  # the same number, written otherwise
    path.write_text("\n".join([text[0], ",".join(fields), *text[2:]]) + "\n")
    (problem,) = next(r for r in compare_results(study, old, new).reports if r.problems).problems
    assert problem.startswith("line 2 (dataset=cifar100 backbone=msdnet_cifar method=standard")
    assert problem.endswith(f"top1 {text[1].split(',')[-1]} (committed) vs {fields[-1]} (new)")


def test_identity_leaves_out_timings_only(committed: Callable[[str], Studies]) -> None:
    """Timings are the machine's: a regeneration under the mode differs in them and in
    nothing else (measured: make verify on the default study, 216 latency cells)."""
    _, old, new = committed("default")
    latency = pd.read_csv(new / "tables" / "latency.csv")
    latency["measured_speedup"] *= 1.1
    latency["early_ms_p50"] += 3.0
    latency.to_csv(new / "tables" / "latency.csv", index=False)
    assert all(not r.problems for r in compare_identical(old / "tables", new / "tables"))
    anytime = pd.read_csv(new / "tables" / "anytime.csv", keep_default_na=False)
    anytime.loc[0, "top1"] += 0.01
    anytime.to_csv(new / "tables" / "anytime.csv", index=False)
    (report,) = [r for r in compare_identical(old / "tables", new / "tables") if r.problems]
    assert report.name == "anytime.csv" and len(report.problems) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"mode": "cpu-default"}, "the runs differ in mode: cpu-avx2 vs cpu-default"),
        ({"torch": "2.6.0"}, "the runs differ in torch: 2.5.1 vs 2.6.0"),
        ({"device": "cuda"}, "the runs differ in device: cpu vs cuda"),
        ({"reproducible": False}, "regenerated runs ran without the reproducible mode"),
        (None, "regenerated runs have no environment.json"),
    ],
)
def test_otherwise_the_comparison_is_statistical_and_says_why(
    two_studies: Callable[[list[int]], Studies], change: dict[str, Any] | None, reason: str
) -> None:
    _, old, new = two_studies([0, 1])
    environment(old)
    if change is not None:
        environment(new, **change)
    same, why = identity_reason(old, new)
    assert not same
    assert reason in why


def test_identity_on_gpu_falls_back(two_studies: Callable[[list[int]], Studies]) -> None:
    _, old, new = two_studies([0, 1])
    environment(old, device="cuda")
    environment(new, device="cuda")
    assert identity_reason(old, new) == (
        False,
        "the runs ran on cuda, whose kernels are not bit-reproducible",
    )


def test_a_one_point_shift_of_one_method_is_caught_statistically(
    committed: Callable[[str], Studies],
) -> None:
    """A -1.0 shift of every joint_bilevel row of the one-seed default study, judged with the
    spread the 5-seed evidence study measures (borrowed: same dataset and backbones), is
    beyond the method's pooled tolerance (0.96 points); with the 3-seed study it passed."""
    config, old, new = committed("default")
    edit_tables(old, shift_top1(-1.0, "joint_bilevel"))
    assert any("method=joint_bilevel" in problem for problem in problems(config, old, new))


@pytest.mark.parametrize("mutation", [shift_top1(-0.5)])
def test_identity_catches_what_statistics_cannot(
    committed: Callable[[str], Studies], mutation: Callable, tmp_path: Path
) -> None:
    """A -0.5 shift of the whole one-seed default study is within what one regeneration
    moves its runs by, so the statistics let it through; in the reproducible mode it is
    caught."""
    config, old, new = committed("default")
    edit_tables(old, mutation)
    assert problems(config, old, new) == []
    for root in (old, new):
        (root / "runs" / "fashion_mnist" / "msdnet_fmnist" / "standard" / "seed0").mkdir(
            parents=True
        )
        environment(root)
    result = compare_results(config, old, new)
    assert result.comparison == "identity"
    assert any(report.problems for report in result.reports)


# --------------------------------------------------------------------------- rows, CLI


def test_rows_on_one_side_only_and_missing_tables_disagree(
    two_studies: Callable[[list[int]], Studies],
) -> None:
    study, committed_root, regenerated = two_studies([0])
    path = regenerated / "tables" / "runs.csv"
    read_table(path).iloc[1:].to_csv(path, index=False)
    (committed_root / "tables" / "claims.csv").unlink()
    reports = {
        r.name: r
        for r in compare_tables(study, *(r / "tables" for r in (committed_root, regenerated)))
    }
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
    study, committed_root, regenerated = two_studies([0, 1])
    config = tmp_path / "fake.yaml"
    config.write_text(yaml.safe_dump(study))
    args = ["verify", "--study", str(config), "--results", str(committed_root)]
    assert main([*args, "--tables-from", str(regenerated)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(TABLE_FILES) + 1
    assert lines[-1].startswith("verify fake (statistical comparison: ")
    assert lines[-1].endswith("; all agree")
    edit_tables(regenerated, set_one("table1.csv", "top1", lambda v: 150, seed=0))
    assert main([*args, "--tables-from", str(regenerated)]) == 1
    out = capsys.readouterr().out
    assert "DISAGREE  table1.csv" in out
    assert out.splitlines()[-1].endswith("1 disagree (table1.csv)")
    environment(committed_root)
    environment(regenerated)
    assert main([*args, "--tables-from", str(regenerated)]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("verify fake (identity comparison: every run of both sides in ")


def test_nothing_committed_is_said_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 26: a study never committed gave twelve 'missing' lines after regenerating it."""

    def regenerate(*_: Any) -> Path:
        raise AssertionError("verify regenerated a study with nothing to compare")

    monkeypatch.setattr(verify_module, "regenerate", regenerate)
    args = ["verify", "--study", str(REPO / "config" / "default.yaml")]
    assert main([*args, "--results", str(tmp_path / "never")]) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert out == ""
    assert line.startswith("eebench verify: nothing committed to compare: ")
    assert "make run STUDY=default" in line
