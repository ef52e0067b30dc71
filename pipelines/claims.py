"""The paper's claims tested on a study: `tables/claims.csv` (docs/protocol.md, "Claims").

Each row of `reference/paper_claims.csv` (C1–C16) says, as data, which runs it compares
(`compare_runs` − `against_runs`: selectors, see `_selected`), what it measures
(`statistic`: a top-1 difference at exits or matched budgets, or a cost ratio), how its
points are combined (`aggregate`) and on which side the paper puts the result (`expect`).
This module never names a method or a backbone family: they come from that CSV, from the
methods' declarations and from the study.

The pairing is per sample: every run's test predictions are read from its `outputs.npz`
and `exit_rules.json` (correct or not at every exit and at every fitted operating point),
and one paired bootstrap (`stats.bootstrap_weights`: the same draws of test images, and of
seeds, for every run) gives each statistic's 95% interval and so its verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eebench.methods import method_class
from eebench.pipelines.config import RunSpec
from eebench.pipelines.outputs import OUTPUTS_FILE, RULES_FILE, read_decisions, read_outputs
from eebench.pipelines.protocol import accuracy_at_budget, assign_exits
from eebench.pipelines.stats import (
    BOOTSTRAP_SEED,
    RESAMPLES,
    bootstrap_weights,
    percentile_interval,
    t_interval,
)
from eebench.pipelines.tables import (
    StudyResults,
    backbone_family,
    main_rule,
    row_label,
    run_hparams,
    run_spec,
    stand_in,
    table1_budgets,
)
from eebench.reference import paper_claims_csv

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = (
    "supported",
    "contradicted",
    "inconclusive",
    "not run",
)
#: The columns of the paper's claims CSV that claims.csv repeats (backbone: the paper's).
PAPER_COLUMNS = ["id", "figure", "mode", "claim", "paper_effect", "paper_dataset"]
CLAIM_COLUMNS = [
    *[*PAPER_COLUMNS, "paper_backbone", "dataset", "backbone", "compare", "against"],
    *["statistic", "unit", "paper_side", "points", "seeds", "estimate", "ci_low", "ci_high"],
    *["ci_method"],
    *["t_low", "t_high", "at", "verdict", "note"],
]
DIFFERENCE = "top1_difference"
#: Each statistic's unit and the value that separates the paper's side from the other.
UNITS = {
    DIFFERENCE: ("top-1 points (compare − against)", 0.0),
    "cost_ratio_to_against_peak": ("MFLOPs ratio (against / compare)", 1.0),
    "cost_ratio_at_peaks": ("MFLOPs ratio (against / compare)", 1.0),
}


def paper_side(claim: pd.Series) -> str:
    """Where the paper puts the statistic: '> 0', '< 1', '|·| < 0.5'."""
    reference = UNITS[claim["statistic"]][1]
    if claim["expect"] != "~":
        return f"{claim['expect']} {reference:g}"
    centred = f"· − {reference:g}" if reference else "·"
    return f"|{centred}| < {claim['margin']:g}"


def paper_claims() -> pd.DataFrame:
    """The claims and how each is tested (`eebench.reference`)."""
    frame = pd.read_csv(StringIO(paper_claims_csv()), dtype=str, keep_default_na=False)
    return frame.assign(
        margin=pd.to_numeric(frame["margin"]), budget_from=pd.to_numeric(frame["budget_from"])
    )


# --------------------------------------------------------------------------- verdict


def aggregate(values: np.ndarray, how: str, expect: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows (draws) of point values → one statistic per row, and the point index it comes
    from in each row (-1 for `mean`). `~` claims are judged on |value|."""
    if how == "mean":
        mean = values.mean(axis=1)
        return (np.abs(mean) if expect == "~" else mean), np.full(len(values), -1)
    keyed = {">": values, "<": -values, "~": -np.abs(values)}[expect]
    rank = min(1 if how == "all_but_one" else 0, values.shape[1] - 1)
    index = np.argsort(keyed, axis=1, kind="stable")[:, rank]
    picked = np.take_along_axis(values, index[:, None], axis=1)[:, 0]
    return (np.abs(picked) if expect == "~" else picked), index


def verdict(low: float, high: float, expect: str, reference: float, margin: float) -> str:
    """Where the interval lies: on the paper's side, on the other one, or across."""
    if np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    if expect == "~":
        low, high, reference, expect = -high, -low, -margin, ">"  # |·| < margin ⇔ −|·| > −margin
    if expect == "<":
        low, high, reference = -high, -low, -reference
    if low > reference:
        return SUPPORTED
    return CONTRADICTED if high < reference else INCONCLUSIVE


# --------------------------------------------------------------------------- statistics


def interpolation_weights(costs: np.ndarray, budgets: np.ndarray) -> np.ndarray:
    """Q×P weights W such that W @ top1 = accuracy_at_budget(costs, top1, budgets) for any
    top1 (it is linear in top1; NaN rows outside the curve's cost range)."""
    return np.stack(
        [accuracy_at_budget(costs, unit, budgets) for unit in np.eye(len(costs))], axis=1
    )


def reach_cost(top1: np.ndarray, costs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row of M×P curves: the cost at which the curve, walked by increasing cost, first
    reaches `target` (linear interpolation from the point before; inf if it never does)."""
    order = np.argsort(costs, axis=1, kind="stable")
    top1, costs = np.take_along_axis(top1, order, 1), np.take_along_axis(costs, order, 1)
    reached = top1 >= target[:, None]
    first = reached.argmax(axis=1)
    rows = np.arange(len(top1))
    before = np.maximum(first - 1, 0)
    a0, a1 = top1[rows, before], top1[rows, first]
    c0, c1 = costs[rows, before], costs[rows, first]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(first > 0, (target - a0) / (a1 - a0), 1.0)
    return np.where(reached.any(axis=1), c0 + share * (c1 - c0), np.inf)


@dataclass(frozen=True)
class Curve:
    """A setting's mean curve over seeds, per draw: top-1 (M×P, %) and cost (M×P)."""

    top1: np.ndarray
    costs: np.ndarray


def _difference(compare: Curve, against: Curve) -> np.ndarray:
    """Top-1 points, compare − against, at every point."""
    return compare.top1 - against.top1


def _ratio_to_against_peak(compare: Curve, against: Curve) -> np.ndarray:
    """Against's cost at its peak top-1 / compare's cost to first reach that top-1."""
    peak = against.top1.max(axis=1)
    cost = reach_cost(against.top1, against.costs, peak)
    return (cost / reach_cost(compare.top1, compare.costs, peak))[:, None]


def _ratio_at_peaks(compare: Curve, against: Curve) -> np.ndarray:
    """Against's cost at its own peak top-1 / compare's cost at its own."""
    own = reach_cost(compare.top1, compare.costs, compare.top1.max(axis=1))
    return (reach_cost(against.top1, against.costs, against.top1.max(axis=1)) / own)[:, None]


STATISTICS: dict[str, Callable[[Curve, Curve], np.ndarray]] = {
    DIFFERENCE: _difference,
    "cost_ratio_to_against_peak": _ratio_to_against_peak,
    "cost_ratio_at_peaks": _ratio_at_peaks,
}


# --------------------------------------------------------------------------- per-sample data


@dataclass(frozen=True)
class Points:
    """One run's per-sample test results at its points (exits, or operating points of an
    exit rule): `correct` P×N, `costs` P (MFLOPs per image over the whole test set)."""

    correct: np.ndarray
    costs: np.ndarray
    labels: np.ndarray


def anytime_points(run_dir: Path) -> Points:
    """Every exit's per-sample correctness, at the exit's cost."""
    outputs = read_outputs(run_dir)
    return Points(outputs.test.correct, outputs.flops, outputs.test.labels)


def rule_points(run_dir: Path, rule: str) -> Points:
    """Per-sample correctness and mean cost at every operating point of an exit rule, from
    the fitted decisions the run saved (the rows of its budgeted.csv, in that order)."""
    outputs = read_outputs(run_dir)
    decisions = [d for d in read_decisions(run_dir) if d.rule == rule]
    if not decisions:
        where = f"{run_dir.parent.name}/{run_dir.name}"
        raise LookupError(f"{where} has no decisions of the exit rule {rule!r}")
    correct, n = outputs.test.correct, len(outputs.test.labels)
    scores = {name: outputs.test.score(name) for name in {d.score for d in decisions}}
    rows, costs = [], []
    for decision in decisions:
        exits = assign_exits(scores[decision.score], np.array([decision.thresholds]))[0]
        rows.append(correct[exits, np.arange(n)])
        costs.append(float(outputs.costs(decision.score)[exits].mean()))
    return Points(np.stack(rows), np.asarray(costs), outputs.test.labels)


@cache
def sample_weights(n: int) -> np.ndarray:
    """The shared draws of n test images (row 0: the test set itself)."""
    return bootstrap_weights(n)


@cache
def seed_weights(n: int) -> np.ndarray:
    """The shared draws of n seeds (row 0: every seed once), independent of the images'."""
    return bootstrap_weights(n, seed=BOOTSTRAP_SEED + 1)


@dataclass(frozen=True, eq=False)
class Setting:
    """One compared run setting (backbone, method[-variant]) and its runs, one per seed."""

    backbone: str
    name: str
    runs: pd.DataFrame

    def spec(self, seed: int) -> RunSpec:
        return run_spec(self.runs[self.runs["seed"] == seed].iloc[0])


@dataclass
class SampleStore:
    """Per-sample points of the study's runs, each read once, and their drawn means."""

    root: Path
    means: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def missing(self, spec: RunSpec) -> list[str]:
        run_dir = self.root / spec.path
        return [
            f"{spec.path}/{name}"
            for name in (OUTPUTS_FILE, RULES_FILE)
            if not (run_dir / name).is_file()
        ]

    def drawn(self, spec: RunSpec, rule: str) -> tuple[np.ndarray, np.ndarray]:
        """((RESAMPLES + 1) × P top-1 in %, row 0 the test set itself; P costs) of a run under
        an exit rule ('' = its exits, anytime)."""
        key = (spec.path, rule)
        if key not in self.means:
            run_dir = self.root / spec.path
            points = rule_points(run_dir, rule) if rule else anytime_points(run_dir)
            self._check_labels(spec, points.labels)
            weights = sample_weights(points.correct.shape[1])
            self.means[key] = (100.0 * weights @ points.correct.T, points.costs)
        return self.means[key]

    def _check_labels(self, spec: RunSpec, labels: np.ndarray) -> None:
        """Pairing needs one test set: every run of a dataset has the same test labels."""
        first = self.labels.setdefault(spec.dataset, labels)
        if not np.array_equal(first, labels):
            raise ValueError(
                f"{spec.path}: its test labels differ from other runs' of "
                f"{spec.dataset}; claims pair runs on the same test images"
            )


# --------------------------------------------------------------------------- selection


@dataclass(frozen=True)
class Item:
    """One selector item: what it selects and, after '@', the backbone family it is on."""

    runs: str
    family: str

    @classmethod
    def parse(cls, text: str) -> Item:
        runs, _, family = text.strip().partition("@")
        return cls(runs.strip(), family.strip())


def parse_selection(text: str) -> list[Item]:
    return [Item.parse(item) for item in text.split(";") if item.strip()]


def _label_matches(label: str, rows: str) -> bool:
    words = set(label.split("+"))
    if rows == "*":
        return bool(label)
    if rows[:1] in "+-" and rows[1:]:
        return bool(label) and ((rows[1:] in words) == (rows[0] == "+"))
    return label == rows


def _selected(item: Item, runs: pd.DataFrame, table: str) -> pd.Series:
    """Mask of the runs (index rows of one dataset and backbone) an item selects:
    `method` (its default variant), `method-variant`, `method[label]` / `[+word]` /
    `[-word]` / `[*]` (the runs that are rows of `table` with that label / whose '+'-joined
    label has, or lacks, the word / all of them), or `figure:NAME` (the default variant of
    every method whose display lists the figure NAME)."""
    kind, _, figure = item.runs.partition(":")
    if kind == "figure" and figure:
        shown = [
            variant == "" and figure in method_class(method).display_of().figures
            for method, variant in zip(runs["method"], runs["variant"], strict=True)
        ]
        return pd.Series(shown, index=runs.index, dtype=bool)
    method, bracket, rows = item.runs.partition("[")
    if bracket:
        labels = [row_label(run_spec(run), run_hparams(run), table) for _, run in runs.iterrows()]
        matches = [_label_matches(label, rows.rstrip("]")) for label in labels]
        return (runs["method"] == method) & pd.Series(matches, index=runs.index, dtype=bool)
    name, _, variant = method.partition("-")
    return (runs["method"] == name) & (runs["variant"] == variant)


def settings_of(item: Item, runs: pd.DataFrame, backbones: list[str], table: str) -> list[Setting]:
    """The settings an item selects on these backbones (its family's, if it names one)."""
    chosen = [b for b in backbones if not item.family or backbone_family(b) == item.family]
    found = []
    for backbone in chosen:
        mine = runs[runs["backbone"] == backbone]
        picked = mine[_selected(item, mine, table)] if len(mine) else mine
        names = [run_spec(run).method_dir for _, run in picked.iterrows()]
        groups = picked.groupby(pd.Series(names, index=picked.index, dtype=str), sort=False)
        found += [Setting(backbone, name, group) for name, group in groups]
    return found


# --------------------------------------------------------------------------- one claim row


@dataclass(frozen=True)
class Row:
    """A claim on one dataset and backbone (or pair of backbones): what it compares."""

    claim: pd.Series
    dataset: str
    backbone: str
    compare: list[Setting]
    against: list[Setting]

    @property
    def pairs(self) -> list[tuple[Setting, Setting]]:
        """Every (compare, against) pair of two different settings."""
        return [
            (c, a)
            for c in self.compare
            for a in self.against
            if (c.backbone, c.name) != (a.backbone, a.name)
        ]

    def paired(self, side: int) -> list[Setting]:
        """The settings of one side (0: compare, 1: against) that are in a pair."""
        return list(dict.fromkeys(pair[side] for pair in self.pairs))

    def seeds(self) -> list[int]:
        """The seeds every compared setting has (pairs are per seed)."""
        settings = [s for pair in self.pairs for s in pair]
        common = set.intersection(*(set(s.runs["seed"]) for s in settings))
        return sorted(int(seed) for seed in common)


def _names(settings: list[Setting], backbone: str) -> str:
    return "; ".join(
        s.name if s.backbone == backbone else f"{s.name}@{s.backbone}" for s in settings
    )


def _rule(row: Row, setting: Setting) -> str:
    """Anytime: '' (exits); budgeted: the claim's exit rule, else the run's main one."""
    if row.claim["mode"] == "anytime":
        return ""
    return row.claim["rule"] or main_rule(setting.runs.iloc[0])


def _budgets(row: Row, study: dict[str, Any]) -> np.ndarray:
    """The Table 1 budgets of the compared backbone, from `budget_from` × its last exit cost."""
    run = row.compare[0].runs.iloc[0]
    budgets = table1_budgets(study["datasets"][row.dataset], run["last_mflops"])
    start = row.claim["budget_from"]
    return budgets[budgets >= start * run["last_mflops"]] if np.isfinite(start) else budgets


@dataclass(frozen=True)
class Drawn:
    """Per setting: top-1 (%) at the claim's points, seeds × draws × points (draw 0: the test
    set itself), the points' costs (seeds × points) and how the points are named."""

    top1: dict[Setting, np.ndarray]
    costs: dict[Setting, np.ndarray]
    labels: list[str]

    def bootstrap(self, setting: Setting, seeds: np.ndarray) -> Curve:
        """The seed-mean curve of every draw: draw r weighs the seeds by row r of `seeds`."""
        top1 = np.einsum("rs,srp->rp", seeds, self.top1[setting])
        return Curve(top1, seeds @ self.costs[setting])

    def per_seed(self, setting: Setting) -> Curve:
        """Each seed's curve on the test set itself."""
        return Curve(self.top1[setting][:, 0], self.costs[setting])


def _drawn(row: Row, seeds: list[int], store: SampleStore, study: dict[str, Any]) -> Drawn:
    """Each setting's drawn curves at the claim's points: the exits every side has, the
    matched Table 1 budgets (differences; NaN outside a seed's curve), or whole curves."""
    top1, costs = {}, {}
    for setting in dict.fromkeys(s for pair in row.pairs for s in pair):
        runs = [store.drawn(setting.spec(seed), _rule(row, setting)) for seed in seeds]
        top1[setting] = np.stack([run[0] for run in runs])
        costs[setting] = np.stack([run[1] for run in runs])
    if row.claim["mode"] == "anytime":
        exits = min(t.shape[2] for t in top1.values())
        return Drawn(
            {s: t[:, :, :exits] for s, t in top1.items()},
            {s: c[:, :exits] for s, c in costs.items()},
            [f"exit {k + 1}" for k in range(exits)],
        )
    if row.claim["statistic"] != DIFFERENCE:
        return Drawn(top1, costs, ["whole curves"])
    budgets = _budgets(row, study)
    for setting, curves in top1.items():
        weights = [interpolation_weights(c, budgets) for c in costs[setting]]
        top1[setting] = np.stack([t @ w.T for t, w in zip(curves, weights, strict=True)])
    matched = np.broadcast_to(budgets, (len(seeds), len(budgets)))
    return Drawn(top1, dict.fromkeys(top1, matched), [f"{b:.4g} MFLOPs" for b in budgets])


@dataclass(frozen=True)
class Statistic:
    """The claim's statistic per row of the curves it was computed on, the point (against
    setting, point label) it comes from in each row (-1: a mean), and every point used."""

    values: np.ndarray
    index: np.ndarray
    points: list[tuple[str, str]]

    def where(self, row: int = 0) -> str:
        """Where row's value comes from: the point, and the against setting of several."""
        if self.index[row] < 0 or len(self.points) == 1:
            return ""
        against, label = self.points[self.index[row]]
        several = len({name for name, _ in self.points}) > 1
        return f"{against} at {label}" if several else label


def _statistic(row: Row, drawn: Drawn, curves: Callable[[Setting], Curve]) -> Statistic | None:
    """The claim's statistic over every pair and every point both of its curves reach
    (a budget outside a curve is left out of that pair); None if no pair has one."""
    statistic, expect = row.claim["statistic"], row.claim["expect"]
    columns, points = [], []
    for compare, against in row.pairs:
        values = STATISTICS[statistic](curves(compare), curves(against))
        kept = np.isfinite(values).all(axis=0)
        columns.append(values[:, kept])
        labels = drawn.labels if values.shape[1] > 1 else drawn.labels[:1]
        points += [(against.name, label) for label, keep in zip(labels, kept, strict=True) if keep]
    if not points:
        return None
    values = np.concatenate(columns, axis=1)
    if expect == "~":  # judged on the distance to the reference
        values = values - UNITS[statistic][1]
    return Statistic(*aggregate(values, row.claim["aggregate"], expect), points)


def _measured(row: Row, seeds: list[int], drawn: Drawn) -> dict[str, Any]:
    """Estimate, bootstrap interval, t-interval (≥3 seeds) and verdict of a prepared row."""
    claim = row.claim
    mix = seed_weights(len(seeds)) if len(seeds) > 1 else np.ones((RESAMPLES + 1, 1))
    drawn_statistic = _statistic(row, drawn, lambda s: drawn.bootstrap(s, mix))
    if drawn_statistic is None:
        return {"verdict": INCONCLUSIVE, "note": "no point inside both curves of any pair"}
    values = drawn_statistic.values
    low, high = percentile_interval(values[1:])
    t_low, t_high = (np.nan, np.nan)
    if len(seeds) >= 3:
        t_low, t_high = t_interval(_statistic(row, drawn, drawn.per_seed).values)
    how = f"paired bootstrap, {RESAMPLES} draws of the test images"
    how += f" × {len(seeds)} seeds" if len(seeds) > 1 else " (one seed)"
    reference = UNITS[claim["statistic"]][1]
    return {
        "points": ", ".join(dict.fromkeys(label for _, label in drawn_statistic.points)),
        "estimate": float(values[0]),
        "ci_low": low,
        "ci_high": high,
        "ci_method": how,
        "t_low": t_low,
        "t_high": t_high,
        "at": drawn_statistic.where(),
        "verdict": verdict(low, high, claim["expect"], reference, claim["margin"]),
    }


def _not_run(note: str) -> dict[str, Any]:
    return {"verdict": NOT_RUN, "note": note}


def evaluate_row(row: Row, store: SampleStore, study: dict[str, Any]) -> dict[str, Any]:
    """The measured columns of one claim row, or `not run` and why."""
    claim, where = row.claim, f"{row.dataset}/{row.backbone}"
    if not row.compare:
        return _not_run(f"no {claim['compare_runs']} run on {where}")
    if not row.pairs:
        return _not_run(f"no {claim['against_runs']} run on {where}")
    seeds = row.seeds()
    if not seeds:
        return _not_run(f"no seed common to every compared run on {where}")
    specs = [s.spec(seed) for pair in row.pairs for s in pair for seed in seeds]
    missing = [path for spec in specs for path in store.missing(spec)]
    if missing:
        return _not_run(f"per-sample outputs missing, e.g. {missing[0]}: run the workflow")
    try:
        drawn = _drawn(row, seeds, store, study)
    except LookupError as error:
        return _not_run(str(error))
    return {"seeds": len(seeds), "note": "", **_measured(row, seeds, drawn)}


def _dataset_rows(
    claim: pd.Series, dataset: str, study: dict[str, Any], runs: pd.DataFrame
) -> Iterator[Row]:
    """The rows of a claim on a study dataset: one per backbone of it, or a single one when
    every item names its backbone family."""
    backbones = list(study["datasets"][dataset]["backbones"])
    mine = runs[runs["dataset"] == dataset]
    sides = [parse_selection(claim[column]) for column in ("compare_runs", "against_runs")]
    fixed = all(item.family for items in sides for item in items)
    for backbone in [""] if fixed else backbones:
        on = backbones if fixed else [backbone]
        chosen = [
            [s for item in items for s in settings_of(item, mine, on, claim["figure"])]
            for items in sides
        ]
        used = list(dict.fromkeys(s.backbone for side in chosen for s in side))
        name = backbone or " vs ".join(used) or "no backbone of " + claim["backbone"]
        yield Row(claim, dataset, name, *chosen)


def claim_rows(
    claim: pd.Series, study: dict[str, Any], results: StudyResults, store: SampleStore
) -> list[dict[str, Any]]:
    """Every row of one claim: per paper dataset (or its stand-in) and backbone."""
    paper = {
        **claim[PAPER_COLUMNS].to_dict(),
        "paper_backbone": claim["backbone"],
        "statistic": claim["statistic"],
        "unit": UNITS[claim["statistic"]][0],
        "paper_side": paper_side(claim),
    }
    datasets = [stand_in(study, name) for name in claim["paper_dataset"].split("/")]
    if not any(datasets):
        note = f"no {claim['paper_dataset']} or stand-in dataset in this study"
        return [{**paper, **_not_run(note)}]
    rows = []
    for dataset in dict.fromkeys(d for d in datasets if d):
        for row in _dataset_rows(claim, dataset, study, results.runs):
            sides = {
                "dataset": dataset,
                "backbone": row.backbone,
                "compare": _names(row.paired(0), row.backbone) or claim["compare_runs"],
                "against": _names(row.paired(1), row.backbone) or claim["against_runs"],
            }
            rows.append({**paper, **sides, **evaluate_row(row, store, study)})
    return rows


def build_claims(
    study: dict[str, Any], results: StudyResults, results_root: str | Path
) -> pd.DataFrame:
    """claims.csv: every claim of the paper, each on every dataset and backbone it applies to."""
    store = SampleStore(Path(results_root))
    rows = [
        row
        for _, claim in paper_claims().iterrows()
        for row in claim_rows(claim, study, results, store)
    ]
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS).astype({"seeds": "Int64"})
