"""`eebench verify`: do a study's committed tables come out again? (docs/protocol.md, "Verify")

`regenerate` runs the study's whole workflow from scratch (Snakemake, this checkout's
Snakefile and default profile) in a fresh folder, the datasets linked rather than copied or
downloaded again; `compare_tables` then compares every table of TABLE_FILES point by point:

- rows are matched on their key columns; a row on one side only is a disagreement;
- `exact` columns (what the config alone fixes: exit costs, budgets, seed counts, the
  claims' verdicts) must be equal (floats to 1e-6 relative);
- `measured` columns (top-1, and what varies like it) agree within 1.96·√2·se: the 95% range
  of the difference of two independent runs whose standard error is se. se is the std over
  the seeds of the point (divided by √n for a mean of n seeds) in the committed table; with
  one seed, the binomial standard error of top-1 over the test images; for a claim, its
  bootstrap interval's half-width / 1.96. A measured column without any (a cost or an ECE
  with one seed) is shown but not judged.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eebench.pipelines.stats import Z, binomial_se
from eebench.pipelines.tables import (
    COMPARISON_COLUMNS,
    RUN_KEYS,
    TABLE_FILES,
    n_test_images,
    read_table,
)

#: Where the checkout's workflow lives (verify needs the repository, not only the package).
REPO = Path(__file__).resolve().parents[1]
EXACT_RTOL = 1e-6
#: Problems printed per table.
SHOWN = 20


@dataclass(frozen=True)
class Measured:
    """A measured column and where its standard error comes from: the column `std` (None:
    the std over the seeds of the row's point) over √ the column `n` (None: one run); the
    binomial one for a `top1` column of a single seed; or the interval `ci` (low, high)."""

    column: str
    std: str | None = None
    n: str | None = None
    top1: bool = False
    ci: tuple[str, str] | None = None


@dataclass(frozen=True)
class TableCheck:
    keys: list[str]
    exact: list[str] = field(default_factory=list)
    measured: list[Measured] = field(default_factory=list)


RUN_POINT = [*RUN_KEYS[:4], "seed"]
TOP1_MEAN = Measured("top1_mean", "top1_std", "n_seeds", top1=True)
CHECKS: dict[str, TableCheck] = {
    "anytime.csv": TableCheck([*RUN_POINT, "exit"], ["mflops"], [Measured("top1", top1=True)]),
    "budgeted.csv": TableCheck(
        [*RUN_KEYS[:4], "policy", "seed", "p"],
        ["q"],
        [Measured("top1", top1=True), Measured("mflops")],
    ),
    "table1.csv": TableCheck(
        ["dataset", "backbone", "features", "seed", "budget_mflops"],
        measured=[Measured("top1", top1=True)],
    ),
    "runs.csv": TableCheck(
        RUN_POINT, ["hparams", "epochs", "train_subset", "exits", "last_mflops", "n_test"]
    ),
    "anytime_summary.csv": TableCheck(
        [*RUN_KEYS[:4], "exit"], ["mflops_mean", "n_seeds"], [TOP1_MEAN]
    ),
    "budgeted_summary.csv": TableCheck(
        [*RUN_KEYS[:4], "policy", "p"],
        ["q", "n_seeds"],
        [TOP1_MEAN, Measured("mflops_mean", "mflops_std", "n_seeds")],
    ),
    "table1_summary.csv": TableCheck(
        ["dataset", "backbone", "features", "budget_mflops"], ["n_seeds"], [TOP1_MEAN]
    ),
    "paper_comparison.csv": TableCheck(
        [*COMPARISON_COLUMNS[:7], "ours_backbone"],
        ["paper_top1", "ours_seeds"],
        [Measured("ours_top1", "ours_top1_std", "ours_seeds", top1=True)],
    ),
    "calibration.csv": TableCheck(
        [*RUN_POINT, "source", "exit"],
        ["mflops"],
        [Measured("top1", top1=True), Measured("nll"), Measured("ece")],
    ),
    "calibration_bins.csv": TableCheck([*RUN_POINT, "source", "exit", "bin"], ["lower", "upper"]),
    "claims.csv": TableCheck(
        ["id", "dataset", "backbone"],
        ["compare", "against", "points", "seeds", "verdict"],
        [Measured("estimate", ci=("ci_low", "ci_high"))],
    ),
    # Which decisions were timed and on how many samples; the timings themselves belong to
    # the machine and its load, so they are not compared.
    "latency.csv": TableCheck(
        [*RUN_POINT, "policy", "p", "mode"], ["samples", "full_mflops"], [Measured("mflops")]
    ),
}


@dataclass
class TableReport:
    """What one table's comparison found."""

    name: str
    agree: int = 0
    unjudged: int = 0
    problems: list[str] = field(default_factory=list)

    def lines(self, shown: int = SHOWN) -> list[str]:
        """A head line, then the first `shown` problems (the count says how many more)."""
        extra = f", {self.unjudged} values without a spread not judged" if self.unjudged else ""
        head = f"{self.name}: {self.agree} values agree{extra}"
        if not self.problems:
            return [f"agree     {head}"]
        more = len(self.problems) - shown
        return [
            f"DISAGREE  {head}, {len(self.problems)} do not:",
            *(f"    {problem}" for problem in self.problems[:shown]),
            *([f"    … and {more} more"] if more > 0 else []),
        ]


# --------------------------------------------------------------------------- spreads


def standard_errors(
    frame: pd.DataFrame, check: TableCheck, measured: Measured, n_test: dict[str, int]
) -> np.ndarray:
    """The standard error of every row's value of a measured column (NaN: none known)."""
    if measured.ci:
        low, high = (frame[column].to_numpy(dtype=float) for column in measured.ci)
        return (high - low) / (2 * Z)
    if measured.std:
        n = frame[measured.n].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            se = frame[measured.std].to_numpy(dtype=float) / np.sqrt(n)
        single = n == 1
    else:
        point = [key for key in check.keys if key != "seed"]
        groups = frame.groupby(point, sort=False, dropna=False)[measured.column]
        se = groups.transform("std").to_numpy(dtype=float)
        single = groups.transform("count").to_numpy() == 1
    if measured.top1:
        sizes = frame["dataset"].map(n_test).to_numpy(dtype=float)
        binomial = binomial_se(frame[measured.column].to_numpy(dtype=float), sizes)
        se = np.where(single, binomial, se)
    return se


# --------------------------------------------------------------------------- comparison


def _keyed(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The frame with float keys rounded (budgets are computed) and a `dup` key that numbers
    rows sharing their keys, so that rows pair up one to one."""
    frame = frame.copy()
    for key in keys:
        if pd.api.types.is_float_dtype(frame[key]):
            frame[key] = frame[key].round(6)
    return frame.assign(dup=frame.groupby(keys, dropna=False).cumcount())


def _row_name(row: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{key}={row[key]}" for key in keys)


def _exact_differs(old: Any, new: Any) -> bool:
    if pd.isna(old) and pd.isna(new):
        return False
    if isinstance(old, int | float | np.number) and isinstance(new, int | float | np.number):
        return not np.isclose(old, new, rtol=EXACT_RTOL, atol=0.0)
    return str(old) != str(new)


def _measured_problem(old: float, new: float, se: float) -> str | None:
    """Why two measured values disagree, or None; '' when there is no spread to judge by."""
    if np.isnan(old) and np.isnan(new):
        return None
    if np.isnan(old) != np.isnan(new):
        return "one side is empty"
    if np.isnan(se):
        return ""
    tolerance = Z * np.sqrt(2) * se + 1e-9
    if abs(old - new) <= tolerance:
        return None
    return f"|Δ| {abs(old - new):.4g} > tolerance {tolerance:.4g}"


def _compare_rows(report: TableReport, merged: pd.DataFrame, check: TableCheck) -> None:
    """Judge every checked value of the rows both tables have."""
    for _, row in merged.iterrows():
        where = _row_name(row, check.keys)
        for column in check.exact:
            old, new = row[f"{column}_old"], row[f"{column}_new"]
            if _exact_differs(old, new):
                report.problems.append(f"{where}: {column} {old} (committed) vs {new} (new)")
            else:
                report.agree += 1
        for measured in check.measured:
            column = measured.column
            old, new = float(row[f"{column}_old"]), float(row[f"{column}_new"])
            problem = _measured_problem(old, new, row[f"se:{column}"])
            if problem is None:
                report.agree += 1
            elif problem == "":
                report.unjudged += 1
            else:
                report.problems.append(
                    f"{where}: {column} {old:.6g} (committed) vs {new:.6g} (new), {problem}"
                )


def compare_table(
    name: str, committed: pd.DataFrame, regenerated: pd.DataFrame, n_test: dict[str, int]
) -> TableReport:
    """One table, point by point; the committed table's spreads set the tolerances."""
    check = CHECKS[name]
    report = TableReport(name)
    columns = [*check.keys, *check.exact, *(m.column for m in check.measured)]
    for side, frame in (("committed", committed), ("regenerated", regenerated)):
        absent = [column for column in columns if column not in frame]
        if absent:
            report.problems.append(f"columns {', '.join(absent)} missing in the {side} table")
    if report.problems:
        return report
    old = _keyed(committed, check.keys).assign(
        **{f"se:{m.column}": standard_errors(committed, check, m, n_test) for m in check.measured}
    )
    new = _keyed(regenerated, check.keys)[[*check.keys, "dup", *columns[len(check.keys) :]]]
    merged = old.merge(
        new, on=[*check.keys, "dup"], how="outer", suffixes=("_old", "_new"), indicator=True
    )
    for side, where in (("left_only", "committed"), ("right_only", "regenerated")):
        for _, row in merged[merged["_merge"] == side].iterrows():
            report.problems.append(f"{_row_name(row, check.keys)}: only in the {where} table")
    _compare_rows(report, merged[merged["_merge"] == "both"], check)
    return report


def compare_tables(study: dict[str, Any], committed: Path, regenerated: Path) -> list[TableReport]:
    """Every table of TABLE_FILES in two tables/ folders of a study."""
    n_test = {dataset: n_test_images(study, dataset) for dataset in study["datasets"]}
    reports = []
    for name in TABLE_FILES:
        paths = {"committed": committed / name, "regenerated": regenerated / name}
        absent = [side for side, path in paths.items() if not path.is_file()]
        if absent:
            reports.append(TableReport(name, problems=[f"missing in the {absent[0]} tables"]))
            continue
        frames = [read_table(path) for path in paths.values()]
        reports.append(compare_table(name, *frames, n_test))
    return reports


# --------------------------------------------------------------------------- regeneration


def link_data(study: dict[str, Any], workdir: Path) -> None:
    """The study's data folder, as the jobs in `workdir` will look for it, linked to the one
    here: a relative data_root resolves against the working folder."""
    data = Path(study["data_root"])
    if not data.is_absolute() and data.exists():
        target = workdir / data
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(data.resolve(), target_is_directory=True)


def regenerate(study_file: Path, study: dict[str, Any], workdir: Path, cores: int) -> Path:
    """The study's whole workflow run from scratch in `workdir`; returns its tables/ folder.

    Raises CalledProcessError when Snakemake fails (its output went to this terminal)."""
    snakefile = REPO / "Snakefile"
    if not snakefile.is_file():
        raise FileNotFoundError(f"{snakefile}: verify runs the workflow of a checkout")
    link_data(study, workdir)
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile)]
    command += ["--directory", str(workdir), "--configfile", str(study_file.resolve())]
    command += ["--profile", str(REPO / "profiles" / "default"), "--cores", str(cores)]
    subprocess.run(command, check=True)
    return workdir / "results" / study["study"] / "tables"


def verify(
    study_file: Path,
    study: dict[str, Any],
    committed: Path,
    tables_from: Path | None = None,
    workdir: Path | None = None,
    cores: int = 2,
) -> list[TableReport]:
    """Compare the committed tables with those of `tables_from` (a results folder of the
    study), or with a regeneration in `workdir` (default: a temporary folder, removed)."""
    if tables_from is not None:
        return compare_tables(study, committed / "tables", tables_from / "tables")
    folder = Path(workdir or tempfile.mkdtemp(prefix=f"eebench-verify-{study['study']}-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        regenerated = regenerate(study_file, study, folder, cores)
        return compare_tables(study, committed / "tables", regenerated)
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
