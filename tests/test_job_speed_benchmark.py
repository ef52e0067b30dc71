"""benchmarks/job_speed.py's pure parts: the study each side runs, and the ratios it prints
(the benchmark itself runs whole jobs for minutes, so it is not run here)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import yaml

from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("job_speed")


def a_checkout(bench: ModuleType, folder: Path, seeds: list[int], validate: str) -> Path:
    """A checkout with only a config/evidence.yaml: what a side reads of its checkout."""
    study = bench.evidence_config(bench.ROOT)
    study.update(seeds=seeds, validate_each_epoch=validate)
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "evidence.yaml").write_text(yaml.safe_dump(study))
    return folder


def test_each_side_runs_its_own_evidence_settings_at_the_asked_size(
    bench: ModuleType, tmp_path: Path
) -> None:
    old = a_checkout(bench, tmp_path / "old", [0, 1, 2], "false")
    study = bench.small_study(10000, 3, old)
    dataset = study["datasets"]["fashion_mnist"]
    assert (dataset["train_subset"], dataset["recipe_overrides"]) == (10000, {"epochs": 3})
    assert study["seeds"] == [0] and study["validate_each_epoch"] == "false"
    assert {run["method"] for run in study["runs"]} == {
        "standard",
        "joint_bilevel",
        "l2w",
        "calibrated_dnn",
        "eenet",
    }
    # every job the benchmark times is a run of that study
    methods = {run.split("/")[3] for _, run in bench.JOBS}
    assert methods <= {run["method"] for run in study["runs"]}


def test_the_tables_job_reads_this_checkouts_seeds_with_the_sides_settings(
    bench: ModuleType, tmp_path: Path
) -> None:
    old = a_checkout(bench, tmp_path / "old", [0, 1, 2], "false")
    study = bench.tables_study(old)
    assert (
        study["seeds"] == bench.evidence_config(bench.ROOT)["seeds"]
        and study["validate_each_epoch"] == "false"
    )


def test_ratios_are_baseline_over_side_per_kind_and_in_total(bench: ModuleType) -> None:
    times = pd.DataFrame(
        [
            dict(round=r, side=side, job=job, run="", s=s)
            for r, scale in ((0, 1.0), (1, 2.0))
            for side, job, s in (
                ("baseline", "train", 12.0),
                ("baseline", "evaluate", 4.0),
                ("current", "train", 6.0),
                ("current", "evaluate", 4.0),
            )
            for s in [s * scale]
        ]
    )
    table = bench.summarise(times).set_index(["job", "side"])
    assert table.loc[("train", "current"), "ratio"] == 2.0
    assert table.loc[("evaluate", "current"), "ratio"] == 1.0
    assert table.loc[("total", "current"), "ratio"] == pytest.approx(16 / 10, abs=1e-3)
    assert table.loc[("total", "baseline"), "median_s"] == 24.0  # median of 16 and 32
