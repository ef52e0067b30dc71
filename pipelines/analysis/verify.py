"""`eebench verify`: do a study's committed tables come out again? (docs/protocol.md, "Verify")

`regenerate` runs the study's whole workflow from scratch (Snakemake, this checkout's
Snakefile and default profile) in a fresh folder, the datasets linked rather than copied or
downloaded again; the tables of TABLE_FILES are then compared in one of two ways:

- **identity**, when every run of both sides recorded (environment.json) the reproducible
  mode with the same mode, torch and device "cpu": every cell must have the same text;
- **statistical** otherwise. Two regenerations share the test images, so what moves a number
  between them is training noise. Its size is measured on the COMMITTED side only, never on
  the regeneration: the spread over seeds of each column, per dataset and backbone and per
  run setting, pooled over points by a median (`seed_spread`), so that editing a few
  committed values cannot widen it; a study with one seed takes it from a committed study
  with seeds on the same dataset and backbone (its sibling folder, e.g. results/evidence),
  and with none a value agrees only when equal. Every value agrees within z·√2·sd (z
  Bonferroni-corrected over the values compared), and the mean difference per method (and
  per table) within z·sd of that mean, sd bounded below by the group's own seed spread: the
  runs on one seed's backbone move together, so a shift of a method is caught only beyond
  what its seeds move by. Costs also get the standard error of a mean cost over the test
  images (from the exit fractions); impossible values (top-1 outside [0, 100], a negative
  cost or spread, an infinity, a NaN facing a number) always disagree. Timings are the
  machine's and are not compared; columns the config fixes, text and counts must be equal;
  verdicts may move to or from "inconclusive" but never flip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from eebench.pipelines.analysis.tables import (
    COMPARISON_COLUMNS,
    RUN_KEYS,
    TABLE_FILES,
    n_test_images,
    read_table,
)

#: Where the checkout's workflow lives (verify needs the repository, not only the package).
REPO = Path(__file__).resolve().parents[2]
EXACT_RTOL = 1e-6
#: Chance that an honest regeneration is called a disagreement, per family of tests (the
#: values; the pooled means).
ALPHA = 0.05
#: Problems printed per table.
SHOWN = 20
#: Columns with the number of seeds a row averages, first match wins.
SEED_COUNTS = ("n_seeds", "ours_seeds", "seeds")
#: What a machine measures of itself (speed, threads): never compared.
MACHINE = ("_ms", "measured_speedup", "speedup_ratio", "device", "threads")
#: Verdict words: a verdict may move to or from an undecided word, not to the opposite one.
DECIDED = {"supported", "contradicted"}
UNDECIDED = {"inconclusive", "not run", ""}
ENVIRONMENT = "environment.json"
#: environment.json keys that must be equal on every run of both sides for identity.
IDENTITY_KEYS = ("mode", "torch", "device")


class NothingToCompareError(ValueError):
    """One side of the comparison has no tables: there is nothing to verify."""


@dataclass(frozen=True)
class TableCheck:
    """How a table is compared: `keys` match rows, `exact` columns are the config's; `unit`
    keys name one trained model (or a mean of seeds of one) whose other keys are its points;
    `seed_table` holds the per-seed values behind a summary; `source` is the per-seed column
    a measured column falls back on; `spread_when` (column, prefix): only rows whose column
    starts with it have a measured spread; `paired`: values are differences of two means;
    `summarised_by`: its measured columns are judged through this column of another table
    (a calibration bin holds a handful of images: empty on one side, full on the other)."""

    keys: list[str]
    exact: list[str] = field(default_factory=list)
    unit: list[str] = field(default_factory=list)
    seed_table: str | None = None
    source: str | None = None
    spread_when: tuple[str, str] | None = None
    paired: bool = False
    summarised_by: str | None = None


RUN_POINT = [*RUN_KEYS[:4], "seed"]
#: Keys of a point that name a kind of point rather than a position on a curve.
TEXT_POINT_KEYS = ("policy", "source", "mode")
RUN = RUN_KEYS[:4]
CHECKS: dict[str, TableCheck] = {
    "anytime.csv": TableCheck([*RUN_POINT, "exit"], ["mflops"], RUN_POINT),
    "budgeted.csv": TableCheck([*RUN, "policy", "seed", "p"], ["q"], RUN_POINT),
    "table1.csv": TableCheck(
        ["dataset", "backbone", "features", "seed", "budget_mflops"],
        unit=["dataset", "backbone", "features", "seed"],
    ),
    "runs.csv": TableCheck(
        RUN_POINT, ["hparams", "epochs", "train_subset", "exits", "last_mflops", "n_test"]
    ),
    "anytime_summary.csv": TableCheck(
        [*RUN, "exit"], ["mflops_mean", "n_seeds"], RUN, "anytime.csv"
    ),
    "budgeted_summary.csv": TableCheck(
        [*RUN, "policy", "p"], ["q", "n_seeds"], RUN, "budgeted.csv"
    ),
    "table1_summary.csv": TableCheck(
        ["dataset", "backbone", "features", "budget_mflops"],
        ["n_seeds"],
        ["dataset", "backbone", "features"],
        "table1.csv",
    ),
    "paper_comparison.csv": TableCheck(
        [*COMPARISON_COLUMNS[:7], "ours_backbone"],
        ["paper_top1", "ours_seeds"],
        ["dataset", "method", "ours_backbone"],
        "budgeted.csv",
        source="top1",
    ),
    # per-exit rows (exit) and per-budget rows (policy, p), whose cost is measured, not fixed
    "calibration.csv": TableCheck([*RUN_POINT, "source", "exit", "policy", "p"], [], RUN_POINT),
    "calibration_bins.csv": TableCheck(
        [*RUN_POINT, "source", "exit", "bin"],
        ["lower", "upper"],
        RUN_POINT,
        summarised_by="calibration.csv ece",
    ),
    "claims.csv": TableCheck(
        ["id", "dataset", "backbone"],
        ["compare", "against", "points", "seeds"],
        seed_table="anytime.csv",
        source="top1",
        spread_when=("unit", "top-1"),
        paired=True,
    ),
    "latency.csv": TableCheck(
        [*RUN_POINT, "policy", "p", "mode"], ["samples", "full_mflops"], RUN_POINT
    ),
}


@dataclass
class TableReport:
    """What one table's comparison found."""

    name: str
    agree: int = 0
    unjudged: int = 0
    problems: list[str] = field(default_factory=list)
    identical: bool = False

    def lines(self, shown: int = SHOWN) -> list[str]:
        """A head line, then the first `shown` problems (the count says how many more)."""
        extra = f", {self.unjudged} values without a measured spread not judged"
        head = f"{self.name}: {self.agree} values {'identical' if self.identical else 'agree'}"
        head += extra if self.unjudged else ""
        if not self.problems:
            return [f"{'identical' if self.identical else 'agree':<9} {head}"]
        more = len(self.problems) - shown
        return [
            f"DISAGREE  {head}, {len(self.problems)} do not:",
            *(f"    {problem}" for problem in self.problems[:shown]),
            *([f"    … and {more} more"] if more > 0 else []),
        ]


@dataclass
class Verification:
    """The reports of every table and which comparison made them, and why."""

    reports: list[TableReport]
    comparison: str
    reason: str


# --------------------------------------------------------------------------- spreads


@dataclass(frozen=True)
class Spread:
    """Training noise of one column on one dataset and backbone: the sd of one value of one
    run between regenerations (`point`), and of a run's mean over its points (`run`)."""

    point: float
    run: float
    source: str


def robust_sd(stds: pd.Series, counts: pd.Series) -> float:
    """The sd pooled over groups by the median of their variances, each scaled by the median
    of its χ² so that it estimates σ² without bias: an edit of a few values moves a median by
    at most a few ranks, where it would widen a mean (or a single group's sd) at will."""
    keep = (counts >= 2) & stds.notna()
    dof = counts[keep].to_numpy(dtype=float) - 1
    if not len(dof):
        return np.nan
    scaled = stds[keep].to_numpy(dtype=float) ** 2 * dof / stats.chi2.ppf(0.5, dof)
    return float(np.sqrt(np.median(scaled)))


def _config_keys(check: TableCheck) -> list[str]:
    return [key for key in check.unit if key != "seed"]


def _text(values: Any) -> tuple[str, ...]:
    return tuple(str(value) for value in (values if isinstance(values, tuple) else (values,)))


def seed_spread(frame: pd.DataFrame, check: TableCheck, column: str) -> dict[tuple, Spread]:
    """The robust sd over seeds of `column` in a per-seed table, at a point and of a run's
    mean over its points: per (dataset, backbone), pooled over every point and run; and per
    run setting (with its text point keys: a policy, a source), at least that: its own
    points' (a learned threshold moves costs more than a fixed one) and, for a run's mean,
    its method's settings'."""
    config = _config_keys(check)
    method = [key for key in config if key not in ("variant", "features")]
    frame = frame.assign(**{column: pd.to_numeric(frame[column], errors="coerce")})
    points = [key for key in check.keys if key not in check.unit]
    kinds = [key for key in points if key in TEXT_POINT_KEYS]
    at_point = frame.groupby([*config, *points], dropna=False)[column].agg(["std", "count"])
    run_means = frame.groupby(check.unit, dropna=False)[column].mean()
    per_run = run_means.groupby(level=config, dropna=False).agg(["std", "count"])
    spreads: dict[tuple, Spread] = {}
    for where, group in at_point.groupby(level=["dataset", "backbone"]):
        point = robust_sd(group["std"], group["count"])
        if np.isnan(point):
            continue
        runs = per_run.xs(where, level=["dataset", "backbone"], drop_level=False)
        pooled = Spread(point, robust_sd(runs["std"], runs["count"]), "")
        spreads[_text(where)] = pooled
        for setting, own in group.groupby(level=[*config, *kinds], dropna=False):
            mine = runs.xs(_text(setting)[: len(method)], level=method, drop_level=False)
            spreads[_text(setting)] = Spread(
                float(np.fmax(robust_sd(own["std"], own["count"]), pooled.point)),
                float(np.fmax(robust_sd(mine["std"], mine["count"]), pooled.run)),
                "",
            )
    return spreads


class Spreads:
    """Measured training noise, from the committed study's own seeds or, for a dataset and
    backbone it has one seed of, from the committed study with the most seeds of it."""

    def __init__(self, committed: Path) -> None:
        self.folders = [committed]
        studies = committed.parent.parent
        self.folders += (
            sorted(p / "tables" for p in studies.iterdir() if p / "tables" != committed)
            if studies.is_dir()
            else []
        )

    @cache  # noqa: B019 - one Spreads per verification
    def _of(self, folder: Path, table: str, column: str) -> dict[tuple, Spread]:
        path = folder / table
        if not path.is_file():
            return {}
        frame = read_table(path)
        if column not in frame or "seed" not in frame:
            return {}
        label = f"seeds of {folder.parent.name}"
        found = seed_spread(frame, CHECKS[table], column)
        return {where: Spread(s.point, s.run, label) for where, s in found.items()}

    @cache  # noqa: B019 - one Spreads per verification
    def group_sd(self, table: str, column: str, method: str | None) -> float:
        """The sd over seeds of a group's mean (one method's runs, or all): its runs share a
        seed's backbone (post-hoc and init_from methods build on another run's), so they move
        together, and only the group's own seeds measure by how much."""
        for folder in self.folders:
            path = folder / table
            if not path.is_file():
                continue
            frame = read_table(path)
            if column not in frame or "seed" not in frame or frame["seed"].nunique() < 2:
                continue
            if method is not None:
                frame = frame[frame["method"] == method] if "method" in frame else frame[:0]
            values = pd.to_numeric(frame[column], errors="coerce")
            runs = frame.assign(value=values).groupby(CHECKS[table].unit, dropna=False)["value"]
            by_seed = runs.mean().groupby(level="seed").mean()
            if by_seed.notna().sum() >= 2:
                return float(by_seed.std())
        return np.nan

    def get(self, table: str, column: str, row: Mapping[str, Any]) -> Spread | None:
        """The spread of a per-seed table's column for a row's run setting (else its dataset
        and backbone); a backbone cell naming several ("a vs b") takes the largest."""
        names = [name.strip() for name in str(row["backbone"]).split(" vs ")]
        found = [self._first(table, column, {**row, "backbone": name}) for name in names]
        found = [spread for spread in found if spread is not None]
        return max(found, key=lambda s: s.point) if found else None

    def _first(self, table: str, column: str, row: Mapping[str, Any]) -> Spread | None:
        check = CHECKS[table]
        config = _config_keys(check) + [k for k in check.keys if k in TEXT_POINT_KEYS]
        wanted = [_text(tuple(row[key] for key in config))] if set(config) <= set(row) else []
        wanted.append(_text((row["dataset"], row["backbone"])))
        for folder in self.folders:
            spreads = self._of(folder, table, column)
            for key in wanted:
                if key in spreads:
                    return spreads[key]
        return None


# --------------------------------------------------------------------------- columns


def column_kind(name: str, column: str, committed: pd.DataFrame) -> str:
    """What a column holds, from its table's check, its name and its committed values:
    'key', 'exact', 'machine', 'verdict', 'cost', 'top1' or 'measured'."""
    check = CHECKS[name]
    values = committed[column]
    if column in check.keys:
        return "key"
    if column in check.exact:
        return "exact"
    if any(mark in column for mark in MACHINE) or column == "exit_fractions":
        return "machine"  # exit fractions are judged through the cost they give
    if check.summarised_by and pd.api.types.is_numeric_dtype(values):
        return "machine"
    if not pd.api.types.is_numeric_dtype(values):
        words = set(values.dropna().astype(str).str.strip().str.lower())
        verdicts = "verdict" in column or (words and words <= DECIDED | UNDECIDED)
        return "verdict" if verdicts else "exact"
    if "mflops" in column:
        return "cost"
    if "speedup" in column:
        return "ratio"  # a cost ratio (the predicted speedup; measured ones are MACHINE's)
    return "top1" if "top1" in column else "measured"


def impossible(kind: str, column: str, value: float) -> bool:
    """A value no run can produce: an infinity, a top-1 outside [0, 100], a negative cost,
    spread, count, ECE or NLL."""
    if np.isnan(value):
        return False
    if np.isinf(value):
        return True
    if kind == "top1" and _is_level(column):
        return not 0.0 <= value <= 100.0
    nonnegative = ("mflops", "std", "nll", "ece", "count", "samples")
    return any(mark in column for mark in nonnegative) and value < 0


def _is_level(column: str) -> bool:
    """A top-1 itself (or a mean of some), not a difference or a spread of them."""
    return not any(mark in column for mark in ("std", "difference", "_low", "_high"))


def role_factor(column: str, n: float) -> float:
    """The sd of a column's value between regenerations, in units of the sd of one run's
    value: a mean of n seeds 1/√n; a std over n seeds 1/√(2(n−1)); a bound of the t-interval
    mean ± c·std, √(1/n + c²/(2(n−1))) (with one seed a Wilson bound follows its value)."""
    n = max(float(n), 1.0) if not np.isnan(n) else 1.0
    if "std" in column:
        return 1 / np.sqrt(2 * (n - 1)) if n >= 2 else 1.0
    if column.endswith(("_low", "_high")) and n >= 2:
        return _bound_factor(n)
    return 1 / np.sqrt(n)


@cache
def _bound_factor(n: float) -> float:
    c = stats.t.ppf(0.975, n - 1) / np.sqrt(n)
    return float(np.sqrt(1 / n + c**2 / (2 * (n - 1))))


def seeds_of(row: Mapping[str, Any]) -> float:
    """How many seeds a row averages (1 for a per-seed row)."""
    for column in SEED_COUNTS:
        if f"{column}_old" in row:
            return float(pd.to_numeric(row[f"{column}_old"], errors="coerce"))
    return 1.0


# --------------------------------------------------------------------------- costs


class Costs:
    """The standard error of a mean cost over the test images: from the exit fractions
    (Σf·c² − (Σf·c)²)/N, else bounded by that of costs spread over [first, last exit]."""

    def __init__(self, committed: Path, n_test: dict[str, int]) -> None:
        self.n_test = n_test
        self.exits: dict[tuple[str, str], np.ndarray] = {}
        path = committed / "anytime.csv"
        if path.is_file():
            frame = read_table(path)
            for (dataset, backbone), group in frame.groupby(["dataset", "backbone"]):
                costs = group.groupby("exit")["mflops"].first().sort_index()
                self.exits[(dataset, backbone)] = costs.to_numpy(dtype=float)

    def se(self, dataset: str, backbone: str, fractions: Any = None) -> float:
        costs = self.exits.get((dataset, backbone))
        n = self.n_test.get(dataset)
        if costs is None or not n:
            return np.nan
        parts = str(fractions).split(";") if isinstance(fractions, str) and fractions else []
        if len(parts) == len(costs):
            share = np.array(parts, dtype=float)
            variance = share @ costs**2 - (share @ costs) ** 2
            return float(np.sqrt(max(variance, 0.0) / n))
        return float((costs.max() - costs.min()) / 2 / np.sqrt(n))


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Judged:
    """A measured value of both sides and the sd of its difference between regenerations."""

    report: TableReport
    where: str
    column: str
    old: float
    new: float
    sd: float


@dataclass(frozen=True)
class Pooled:
    """The mean difference of a column over the runs of a group (a method, or a table)."""

    report: TableReport
    group: str
    column: str
    mean: float
    sd: float
    runs: int


@dataclass
class Context:
    """What the tolerances come from, all of it the committed side's; and what was judged."""

    committed: Path
    spreads: Spreads
    costs: Costs
    judged: list[Judged] = field(default_factory=list)
    pooled: list[Pooled] = field(default_factory=list)
    sources: dict[tuple[str, str], tuple[str, str] | None] = field(default_factory=dict)

    def seed_columns(self, table: str) -> list[str]:
        path = self.committed / table
        return list(pd.read_csv(path, nrows=0).columns) if path.is_file() else []

    def source(self, name: str, column: str) -> tuple[str, str] | None:
        """The per-seed table and column whose seed spread a column's values move by."""
        if (name, column) not in self.sources:
            self.sources[(name, column)] = self._source(name, column)
        return self.sources[(name, column)]

    def _source(self, name: str, column: str) -> tuple[str, str] | None:
        check = CHECKS[name]
        if "seed" in check.keys:
            return name, column
        if check.seed_table is None:
            return None
        per_seed = CHECKS[check.seed_table]
        fixed = {*per_seed.keys, *per_seed.exact}
        columns = self.seed_columns(check.seed_table)
        inside = [c for c in columns if c in column and c not in fixed]
        best = max(inside, key=len, default=check.source)
        return (check.seed_table, best) if best else None

    def sd(
        self, name: str, column: str, kind: str, row: Mapping[str, Any], run: bool = False
    ) -> float:
        """The sd between regenerations of one row's value (`run`: of its run's mean)."""
        if kind == "ratio":  # full cost / cost: moves by the cost's relative sd
            ratio = _number(row[f"{column}_old"]) / _number(row["mflops_old"])
            return self.sd(name, "mflops", "cost", row, run) * ratio
        check = CHECKS[name]
        dataset, backbone = row["dataset"], _backbone(row)
        named = ("method", "variant", "features", *TEXT_POINT_KEYS)
        setting = {key: row[key] for key in named if key in row}
        setting |= {"dataset": dataset, "backbone": backbone}
        source = self.source(name, column)
        spread = self.spreads.get(*source, setting) if source else None
        sigma = (spread.run if run else spread.point) if spread else np.nan
        if kind == "cost":
            fractions = None if run else row.get("exit_fractions_old")
            sigma = float(np.fmax(sigma, self.costs.se(dataset, backbone, fractions)))
        factor = role_factor(column, seeds_of(row)) * (np.sqrt(2) if check.paired else 1.0)
        return float(np.sqrt(2) * sigma * factor)


def _backbone(row: Mapping[str, Any]) -> str:
    """The suite's backbone of a row (paper_comparison's `backbone` is the paper's)."""
    return str(row["ours_backbone"] if "ours_backbone" in row else row["backbone"])


def _keyed(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The frame with float keys rounded (budgets are computed) and a `dup` key that numbers
    rows sharing their keys, so that rows pair up one to one."""
    frame = frame.copy()
    for key in keys:
        if pd.api.types.is_float_dtype(frame[key]):
            frame[key] = frame[key].round(6)
    return frame.assign(dup=frame.groupby(keys, dropna=False).cumcount())


def _row_name(row: Mapping[str, Any], keys: list[str]) -> str:
    return " ".join(f"{key}={row[key]}" for key in keys)


def _exact_differs(old: Any, new: Any) -> bool:
    if pd.isna(old) and pd.isna(new):
        return False
    if isinstance(old, int | float | np.number) and isinstance(new, int | float | np.number):
        return not abs(old - new) <= EXACT_RTOL * abs(new)
    return str(old) != str(new)


def _verdict_flips(old: Any, new: Any) -> bool:
    """Noise may move a verdict to or from an undecided one; never to another decided one."""
    old, new = (str(v).strip().lower() if not pd.isna(v) else "" for v in (old, new))
    return old != new and old not in UNDECIDED and new not in UNDECIDED


def _number(value: Any) -> float:
    number = pd.to_numeric(value, errors="coerce")
    return float(number) if np.ndim(number) == 0 else np.nan


def _compare_value(
    context: Context,
    report: TableReport,
    row: Mapping[str, Any],
    column: str,
    kind: str,
    where: str,
) -> None:
    """Judge one cell now (text, verdicts, impossible or missing numbers), or queue it for the
    corrected tolerance."""
    old, new = row[f"{column}_old"], row[f"{column}_new"]
    if kind in ("exact", "verdict"):
        differs = _exact_differs(old, new) if kind == "exact" else _verdict_flips(old, new)
        if differs:
            report.problems.append(f"{where}: {column} {old} (committed) vs {new} (new)")
        else:
            report.agree += 1
        return
    old, new = _number(old), _number(new)
    sides = ((old, "committed"), (new, "new"))
    bad = [f"{v:g} ({side})" for v, side in sides if impossible(kind, column, v)]
    if bad or np.isnan(old) != np.isnan(new):
        why = f"impossible value {', '.join(bad)}" if bad else "a NaN faces a number"
        report.problems.append(f"{where}: {column} {old:.6g} (committed) vs {new:.6g} (new), {why}")
    elif np.isnan(old):
        report.agree += 1
    elif not _has_spread(report.name, row):
        report.unjudged += 1
    else:
        sd = context.sd(report.name, column, kind, row)
        if not np.isnan(sd):
            context.judged.append(Judged(report, where, column, old, new, sd))
        elif _exact_differs(old, new):
            report.problems.append(
                f"{where}: {column} {old:.6g} (committed) vs {new:.6g} (new), and no measured "
                f"spread to judge a difference by: commit a study with two or more seeds of "
                f"{row['dataset']}/{_backbone(row)} next to it, or run both in the "
                "reproducible mode"
            )
        else:
            report.agree += 1


def _has_spread(name: str, row: Mapping[str, Any]) -> bool:
    """Whether a row's numbers are of a kind a spread is measured for (a claim's peak-cost
    ratio is not: no per-seed column holds it)."""
    when = CHECKS[name].spread_when
    return when is None or str(row[f"{when[0]}_old"]).startswith(when[1])


def _pool(context: Context, report: TableReport, both: pd.DataFrame, kinds: dict[str, str]) -> None:
    """Queue the mean difference of every level column over the runs of each method (and of
    the whole table): a run's points move together, so its mean difference is one draw, and
    runs on one seed's backbone move together, so the group's own seed spread bounds it too."""
    unit = CHECKS[report.name].unit
    if not unit or both.empty:
        return
    for column, kind in kinds.items():
        if kind not in ("top1", "cost", "ratio", "measured") or not _is_level(column):
            continue
        new, old = (
            pd.to_numeric(both[f"{column}_{side}"], errors="coerce") for side in ("new", "old")
        )
        runs = both.assign(diff=new - old).groupby(unit, dropna=False, sort=False)
        means = runs["diff"].mean()
        first = runs.head(1).to_dict("records")
        sds = np.array([context.sd(report.name, column, kind, row, run=True) for row in first])
        ok = means.notna().to_numpy() & ~np.isnan(sds)
        groups: list[tuple[str | None, np.ndarray]] = [(None, ok)]
        if "method" in unit:
            methods = means.index.get_level_values("method")
            groups += [(m, ok & (methods == m)) for m in pd.unique(methods)]
        source = context.source(report.name, column)
        for method, mask in groups:
            if mask.sum() < 2:
                continue
            apart = np.sqrt((sds[mask] ** 2).sum()) / mask.sum()
            if "seed" in unit:
                seeds = float(means.index.get_level_values("seed")[mask].nunique())
            else:
                seeds = seeds_of(first[int(np.argmax(mask))])
            seeds = seeds if seeds >= 1 else 1.0  # NaN or 0: a row of no seed
            together = np.sqrt(2 / seeds) * context.spreads.group_sd(*source, method)
            group = "all runs" if method is None else f"method={method}"
            sd = float(np.fmax(apart, together))
            mean = float(means[mask].mean())
            context.pooled.append(Pooled(report, group, column, mean, sd, int(mask.sum())))


def compare_table(
    context: Context, name: str, committed: pd.DataFrame, regenerated: pd.DataFrame
) -> TableReport:
    """One table, point by point: text and verdicts now, measured values queued for the
    tolerances `finish` sets."""
    check = CHECKS[name]
    report = TableReport(name)
    for side, frame, other in (
        ("committed", committed, regenerated),
        ("regenerated", regenerated, committed),
    ):
        absent = [column for column in [*check.keys, *other.columns] if column not in frame]
        if absent:
            report.problems.append(f"columns {', '.join(absent)} missing in the {side} table")
    if report.problems:
        return report
    kinds = {column: column_kind(name, column, committed) for column in committed.columns}
    kinds = {column: kind for column, kind in kinds.items() if kind not in ("key", "machine")}
    merged = _keyed(committed, check.keys).merge(
        _keyed(regenerated, check.keys),
        on=[*check.keys, "dup"],
        how="outer",
        suffixes=("_old", "_new"),
        indicator=True,
    )
    for side, where in (("left_only", "committed"), ("right_only", "regenerated")):
        for _, row in merged[merged["_merge"] == side].iterrows():
            report.problems.append(f"{_row_name(row, check.keys)}: only in the {where} table")
    both = merged[merged["_merge"] == "both"]
    for row in both.to_dict("records"):
        where = _row_name(row, check.keys)
        for column, kind in kinds.items():
            _compare_value(context, report, row, column, kind, where)
    _pool(context, report, both, kinds)
    return report


def bonferroni(tests: int) -> float:
    """The normal quantile that keeps the chance of any false alarm among `tests` at ALPHA."""
    return float(stats.norm.isf(ALPHA / (2 * max(tests, 1))))


def finish(context: Context) -> tuple[float, float]:
    """Judge the queued values and pooled means; returns the two z's used."""
    z_value, z_pooled = bonferroni(len(context.judged)), bonferroni(len(context.pooled))
    for value in context.judged:
        tolerance = z_value * value.sd
        if abs(value.new - value.old) <= tolerance:
            value.report.agree += 1
        else:
            value.report.problems.append(
                f"{value.where}: {value.column} {value.old:.6g} (committed) vs "
                f"{value.new:.6g} (new), |Δ| {abs(value.new - value.old):.4g} > tolerance "
                f"{tolerance:.4g}"
            )
    for pooled in context.pooled:
        tolerance = z_pooled * pooled.sd
        if abs(pooled.mean) > tolerance:
            pooled.report.problems.append(
                f"{pooled.group}: {pooled.column} moved by {pooled.mean:+.4g} on average over "
                f"{pooled.runs} runs, beyond {tolerance:.4g}"
            )
    return z_value, z_pooled


def _table_pairs(
    committed: Path, regenerated: Path, names: tuple[str, ...] = TABLE_FILES
) -> Iterator[tuple[str, Path, Path]]:
    for name in names:
        yield name, committed / name, regenerated / name


def _missing(old: Path, new: Path) -> str | None:
    absent = [
        side for side, path in (("committed", old), ("regenerated", new)) if not path.is_file()
    ]
    return f"missing in the {absent[0]} tables" if absent else None


def compare_tables(
    study: dict[str, Any],
    committed: Path,
    regenerated: Path,
    names: tuple[str, ...] = TABLE_FILES,
) -> list[TableReport]:
    """The tables `names` (default: all) of two tables/ folders of a study, statistically."""
    n_test = {dataset: n_test_images(study, dataset) for dataset in study["datasets"]}
    context = Context(committed, Spreads(committed), Costs(committed, n_test))
    reports = []
    for name, old, new in _table_pairs(committed, regenerated, names):
        problem = _missing(old, new)
        if problem:
            reports.append(TableReport(name, problems=[problem]))
        else:
            reports.append(compare_table(context, name, read_table(old), read_table(new)))
    finish(context)
    return reports


def compare_identical(committed: Path, regenerated: Path) -> list[TableReport]:
    """Every table of TABLE_FILES cell by cell, as text: the reproducible mode's promise."""
    reports = []
    for name, old, new in _table_pairs(committed, regenerated):
        report = TableReport(name, identical=True)
        reports.append(report)
        problem = _missing(old, new)
        if problem:
            report.problems.append(problem)
            continue
        frames = [pd.read_csv(p, dtype=str, keep_default_na=False) for p in (old, new)]
        if list(frames[0].columns) != list(frames[1].columns) or len(frames[0]) != len(frames[1]):
            shapes = " vs ".join(f"{len(f)} rows of {', '.join(f.columns)}" for f in frames)
            report.problems.append(f"the tables differ in shape: {shapes}")
            continue
        # timings are the machine's, not numbers a run makes: never part of identity
        timed = [any(mark in column for mark in MACHINE) for column in frames[0].columns]
        differs = (frames[0].to_numpy() != frames[1].to_numpy()) & ~np.array(timed)
        report.agree = int((~differs).sum()) - len(frames[0]) * sum(timed)
        for row, column in zip(*np.nonzero(differs), strict=True):
            name_ = frames[0].columns[column]
            report.problems.append(
                f"line {row + 2} ({_row_name(frames[0].iloc[row], CHECKS[name].keys)}): {name_} "
                f"{frames[0].iat[row, column]} (committed) vs {frames[1].iat[row, column]} (new)"
            )
    return reports


# --------------------------------------------------------------------------- identity


def environments(results: Path) -> dict[str, dict[str, Any] | None]:
    """Every run folder of a results folder and its environment.json (None: none)."""
    found = {}
    for seed in sorted((results / "runs").glob("*/*/*/seed*")):
        path = seed / ENVIRONMENT
        found[str(seed.relative_to(results))] = (
            json.loads(path.read_text()) if path.is_file() else None
        )
    return found


def identity_reason(committed: Path, regenerated: Path) -> tuple[bool, str]:
    """Whether both sides ran every run in the same reproducible mode, and why (not)."""
    sides = {"committed": environments(committed), "regenerated": environments(regenerated)}
    for side, runs in sides.items():
        if not runs:
            return False, f"no run folders in the {side} results"
        lacking = [run for run, env in runs.items() if env is None]
        if lacking:
            return False, f"{len(lacking)} {side} runs have no {ENVIRONMENT} (e.g. {lacking[0]})"
        off = [run for run, env in runs.items() if not env.get("reproducible")]
        if off:
            return (
                False,
                f"{len(off)} {side} runs ran without the reproducible mode (e.g. {off[0]})",
            )
    every = [env for runs in sides.values() for env in runs.values()]
    for key in IDENTITY_KEYS:
        values = sorted({str(env.get(key)) for env in every})
        if len(values) > 1:
            return False, f"the runs differ in {key}: {' vs '.join(values)}"
    env = every[0]
    if env.get("device") != "cpu":
        return False, f"the runs ran on {env.get('device')}, whose kernels are not bit-reproducible"
    return (
        True,
        f"every run of both sides in reproducible mode {env['mode']}, torch {env['torch']}, cpu",
    )


def compare_results(study: dict[str, Any], committed: Path, regenerated: Path) -> Verification:
    """Two results folders of a study: identical when both ran in the same reproducible mode,
    statistically otherwise."""
    same, reason = identity_reason(committed, regenerated)
    if same:
        return Verification(
            compare_identical(committed / "tables", regenerated / "tables"), "identity", reason
        )
    reports = compare_tables(study, committed / "tables", regenerated / "tables")
    return Verification(reports, "statistical", reason)


# --------------------------------------------------------------------------- regeneration


def committed_tables(study: dict[str, Any], committed: Path) -> None:
    """Raise NothingToCompareError (one line, with the remedy) unless the study's results
    folder holds tables to verify."""
    tables = committed / "tables"
    if not any((tables / name).is_file() for name in TABLE_FILES):
        name = study["study"]
        raise NothingToCompareError(
            f"nothing committed to compare: {tables} holds no tables of study {name}; run it "
            f"(make run STUDY={name}) and commit results/{name}/tables, or pass --results DIR"
        )


def link_data(study: dict[str, Any], workdir: Path) -> None:
    """The study's data folder, as the jobs in `workdir` will look for it, linked to the one
    here: a relative data_root resolves against the working folder."""
    data = Path(study["data_root"])
    if not data.is_absolute() and data.exists():
        target = workdir / data
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(data.resolve(), target_is_directory=True)


def regenerate(study_file: Path, study: dict[str, Any], workdir: Path, cores: int) -> Path:
    """The study's whole workflow run from scratch in `workdir`; returns its results folder.

    Raises CalledProcessError when Snakemake fails (its output went to this terminal)."""
    snakefile = REPO / "Snakefile"
    if not snakefile.is_file():
        raise FileNotFoundError(f"{snakefile}: verify runs the workflow of a checkout")
    link_data(study, workdir)
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile)]
    command += ["--directory", str(workdir), "--configfile", str(study_file.resolve())]
    command += ["--profile", str(REPO / "profiles" / "default"), "--cores", str(cores)]
    subprocess.run(command, check=True)
    return workdir / "results" / study["study"]


def verify(
    study_file: Path,
    study: dict[str, Any],
    committed: Path,
    tables_from: Path | None = None,
    workdir: Path | None = None,
    cores: int = 2,
) -> Verification:
    """Compare the committed results with `tables_from` (a results folder of the study), or
    with a regeneration in `workdir` (default: a temporary folder, removed)."""
    committed_tables(study, committed)
    if tables_from is not None:
        if not (tables_from / "tables").is_dir():
            raise NothingToCompareError(
                f"{tables_from / 'tables'} does not exist: --tables-from takes a results "
                "folder of the study, the one holding tables/"
            )
        return compare_results(study, committed, tables_from)
    folder = Path(workdir or tempfile.mkdtemp(prefix=f"eebench-verify-{study['study']}-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return compare_results(study, committed, regenerate(study_file, study, folder, cores))
    finally:
        if workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
