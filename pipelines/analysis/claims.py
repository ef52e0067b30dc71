"""The paper's claims tested on a study: `tables/claims.csv` (docs/protocol.md, "Claims").

Each row of `reference/paper_claims.csv` (C1–C16) says, as data, which runs it compares
(`compare_runs` − `against_runs`: selectors, see `_selected`), what it measures
(`statistic`: a top-1 difference at exits, costs or matched budgets, or a cost ratio), how
its points are combined (`aggregate`), on which side the paper puts the result (`expect`)
and the paper's magnitude (`magnitude`). This module never names a method or a backbone
family: they come from that CSV, from the methods' declarations and from the study.

The pairing is per sample: every run's test predictions are read from its `outputs.npz`
and `exit_rules.json` (correct or not at every exit and at every fitted operating point).
Each point's paired difference has a t-interval over the seeds with the test images'
variance added (`stats.seed_image_se`); a claim about every point is judged by the
intersection–union rule (supported when every point's own interval clears the reference,
contradicted when one point's Bonferroni-corrected interval lies on the other side), and
the rows of a study are corrected together (Holm). Cost ratios: the same interval on the
log ratio, the images' variance from RESAMPLES parametric draws of the curves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eebench.methods import method_class
from eebench.pipelines.analysis.stats import (
    LEVEL,
    RESAMPLES,
    half_width,
    holm,
    normal_draws,
    one_sided_p,
    seed_image_se,
    t_bounds,
)
from eebench.pipelines.analysis.tables import (
    StudyResults,
    backbone_family,
    main_rule,
    row_label,
    run_hparams,
    run_spec,
    stand_in,
    table1_budgets,
)
from eebench.pipelines.evaluation.outputs import (
    OUTPUTS_FILE,
    RULES_FILE,
    read_decisions,
    read_outputs,
)
from eebench.pipelines.evaluation.protocol import accuracy_at_budget, assign_exits
from eebench.pipelines.workflow.config import RunSpec
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
    *[*PAPER_COLUMNS, "paper_backbone", "dataset", "backbone", "is_paper_backbone"],
    *["compare", "against", "statistic", "unit", "paper_side", "points", "seeds"],
    *["estimate", "ci_low", "ci_high", "ci_method", "at", "p_value", "p_holm", "verdict"],
    *["paper_magnitude", "magnitude_p_value", "magnitude_p_holm", "magnitude_verdict"],
    *["mde", "seeds_needed", "control", "control_estimate", "control_ci_low"],
    *["control_ci_high", "note"],
]
DIFFERENCE = "top1_difference"
#: Each statistic's unit and the value that separates the paper's side from the other.
UNITS = {
    DIFFERENCE: ("top-1 points (compare − against)", 0.0),
    "cost_ratio_to_against_peak": ("MFLOPs ratio (against / compare)", 1.0),
    "cost_ratio_at_peaks": ("MFLOPs ratio (against / compare)", 1.0),
}
#: The point of a cost ratio: it reads both curves whole.
WHOLE_CURVES = "whole curves"
#: The power the smallest detectable effect (`mde`) is stated at.
POWER = 0.8
#: How far a curve that never reaches a cost ratio's top-1 is extended (× its last cost).
EXTEND_AT_MOST = 10.0
#: The most seeds `seeds_needed` looks for; beyond it, more seeds do not decide a row.
MAX_SEEDS = 1000


def is_ratio(statistic: str) -> bool:
    """Ratios are tested on their logarithm (a symmetric scale) and reported as ratios."""
    return statistic != DIFFERENCE


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
    numbers = ("margin", "budget_from", "magnitude")
    return frame.assign(**{name: pd.to_numeric(frame[name]) for name in numbers})


def row_aggregate(claim: pd.Series, paper_datasets: list[str]) -> str:
    """The claim's `aggregate` on a row standing for these paper datasets: `how` or
    `how; dataset: other; …` (a paper dataset's own rule; the most lenient of those the
    row stands for, as the paper's exception may be on either)."""
    default, *special = [part.strip() for part in claim["aggregate"].split(";")]
    rules = dict(part.split(":") for part in special)
    own = [rules[name].strip() for name in paper_datasets if name in rules]
    return "all_but_one" if "all_but_one" in own else (own[0] if own else default)


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Measure:
    """A statistic at Q points: its estimate (Q), each seed's value on the test set (n×Q),
    the test images' variance of the seed-mean estimate (Q), and where each point is."""

    estimate: np.ndarray
    per_seed: np.ndarray
    image_var: np.ndarray
    n_images: int
    points: list[tuple[str, str]]

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seeds' standard error, images' standard error, seeds' degrees of freedom."""
        return seed_image_se(self.per_seed, self.image_var)


def distance(estimate: np.ndarray, reference: float, expect: str, margin: float) -> np.ndarray:
    """Signed distance of each point from the reference, positive on the paper's side
    ('~': inside ±margin)."""
    if expect == "~":
        return margin - np.abs(estimate - reference)
    return estimate - reference if expect == ">" else reference - estimate


@dataclass(frozen=True)
class Decision:
    """A row's one-sided p-values: `support` (intersection–union: the least favourable
    point's, or the second least for `all_but_one`) and `contradict` (the most unfavourable
    point's, × Q: Bonferroni); `point`: the binding point."""

    support: float
    contradict: float
    point: int

    @property
    def p_value(self) -> float:
        """Two-sided: the row is decided at LEVEL when p ≤ 1 − LEVEL."""
        return min(1.0, 2 * min(self.support, self.contradict))

    @property
    def side(self) -> str:
        return SUPPORTED if self.support <= self.contradict else CONTRADICTED


def decide(gaps: np.ndarray, parts: tuple[np.ndarray, ...], how: str) -> Decision:
    """The intersection–union decision of points at signed distances `gaps` (see
    `distance`) with errors `parts` (`Measure.parts`): `every` point (or `all_but_one`) on
    the paper's side. A point without error is decided by its sign alone."""
    support = one_sided_p(gaps, *parts)
    contradict = one_sided_p(-gaps, *parts)
    rank = 1 if how == "all_but_one" and len(gaps) > 1 else 0
    point = int(np.argsort(-support, kind="stable")[rank])
    against = float(np.sort(contradict)[rank]) * len(gaps)
    return Decision(float(support[point]), min(1.0, against), point)


def seeds_needed(measure: Measure, gaps: np.ndarray, how: str) -> float:
    """The seeds the observed spread would need for the row's interval to clear its
    reference at the observed estimates (support: every point; else contradiction at its
    most unfavourable point, Bonferroni-corrected); NaN with one seed (no spread seen) or
    when more seeds do not decide it (the test images' variance alone is too large)."""
    if len(measure.per_seed) < 2:
        return np.nan
    seeds = np.arange(2, MAX_SEEDS + 1)[:, None]
    spread = measure.per_seed.std(axis=0, ddof=1)
    positive = gaps > 0
    lenient = how == "all_but_one" and len(gaps) > 1
    supported = bool(positive.sum() >= len(gaps) - lenient)
    level = LEVEL if supported else 1 - (1 - LEVEL) / len(gaps)
    half = half_width(spread / np.sqrt(seeds), np.sqrt(measure.image_var), seeds - 1, level)
    clears = half < np.abs(gaps)
    first = np.where(clears.any(axis=0), seeds[clears.argmax(axis=0), 0], np.nan)
    if supported:  # every point on the paper's side must clear, but a spare exception
        spare = int(lenient) - int((~positive).sum())
        wanted = np.sort(first[positive])[: positive.sum() - spare]  # NaN (never) sorts last
        return float(wanted.max()) if len(wanted) else np.nan
    decided = np.sort(first[~positive & ~np.isnan(first)])  # one point (two: `all_but_one`)
    return float(decided[int(lenient)]) if len(decided) > lenient else np.nan


def smallest_effect(measure: Measure) -> float:
    """The smallest distance from the reference, at every point, that the row detects with
    POWER at LEVEL: its noisiest point's half-width plus the POWER quantile's."""
    parts = measure.parts()
    power = half_width(*parts, level=2 * POWER - 1)
    return float(np.max(half_width(*parts) + power))


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


def extended_reach_cost(top1: np.ndarray, costs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`reach_cost`, where a curve that never reaches the target is extended along its
    last rising segment (at most to EXTEND_AT_MOST × its last cost; that bound when its
    last segment does not rise): a ratio then moves with how far short the curve falls,
    and its interval does not collapse onto 'never reaches'."""
    reached = reach_cost(top1, costs, target)
    order = np.argsort(costs, axis=1, kind="stable")
    top1, costs = np.take_along_axis(top1, order, 1), np.take_along_axis(costs, order, 1)
    last = costs[:, -1]
    rise = top1[:, -1] - top1[:, -2] if top1.shape[1] > 1 else np.zeros(len(top1))
    run = costs[:, -1] - costs[:, -2] if costs.shape[1] > 1 else np.zeros(len(costs))
    with np.errstate(divide="ignore", invalid="ignore"):
        extended = last + (target - top1[:, -1]) * run / rise
    extended = np.where(
        rise > 0, np.minimum(extended, EXTEND_AT_MOST * last), EXTEND_AT_MOST * last
    )
    return np.where(np.isfinite(reached), reached, extended)


@dataclass(frozen=True)
class Curve:
    """A setting's curves, one per row: top-1 (M×P, %) and cost (M×P)."""

    top1: np.ndarray
    costs: np.ndarray


def _ratio_to_against_peak(compare: Curve, against: Curve) -> np.ndarray:
    """Against's cost at its peak top-1 / compare's cost to first reach that top-1."""
    peak = against.top1.max(axis=1)
    cost = reach_cost(against.top1, against.costs, peak)
    return cost / extended_reach_cost(compare.top1, compare.costs, peak)


def _ratio_at_peaks(compare: Curve, against: Curve) -> np.ndarray:
    """Against's cost at its own peak top-1 / compare's cost at its own."""
    own = reach_cost(compare.top1, compare.costs, compare.top1.max(axis=1))
    return reach_cost(against.top1, against.costs, against.top1.max(axis=1)) / own


RATIOS: dict[str, Callable[[Curve, Curve], np.ndarray]] = {
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

    def at(self, costs: np.ndarray) -> np.ndarray:
        """Per-sample correctness (Q×N, float) at these costs along the curve (linear in
        cost between neighbouring points, as Table 1's budgets; NaN rows outside it)."""
        return interpolation_weights(self.costs, costs) @ self.correct


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
    """Per-sample points of the study's runs, each read once."""

    root: Path
    read: dict[tuple[str, str], Points] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def missing(self, spec: RunSpec) -> list[str]:
        run_dir = self.root / spec.path
        return [
            f"{spec.path}/{name}"
            for name in (OUTPUTS_FILE, RULES_FILE)
            if not (run_dir / name).is_file()
        ]

    def points(self, spec: RunSpec, rule: str) -> Points:
        """A run's points under an exit rule ('' = its exits, anytime)."""
        key = (spec.path, rule)
        if key not in self.read:
            run_dir = self.root / spec.path
            points = rule_points(run_dir, rule) if rule else anytime_points(run_dir)
            self._check_labels(spec, points.labels)
            self.read[key] = points
        return self.read[key]

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
    `method` (its default variant), `method-variant`, `method-pattern` (the variants that
    match a shell pattern: `-*` every one, `-lam=*` the λ ones),
    `method[label]` / `[+word]` / `[-word]` / `[*]` (the runs that are rows of `table` with
    that label / whose '+'-joined label has, or lacks, the word / all of them), or
    `figure:NAME` (the default variant of every method whose display lists the figure NAME)."""
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
    matches = [fnmatchcase(label, variant) for label in runs["variant"]]
    return (runs["method"] == name) & pd.Series(matches, index=runs.index, dtype=bool)


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


Pair = tuple[Setting, Setting]


@dataclass(frozen=True)
class Row:
    """A claim on one dataset and backbone (or pair of backbones): what it compares, the
    paper datasets it stands for, and the claim's control (`control_runs` set against
    `compare_runs`, and against `control_base`) where it names one."""

    claim: pd.Series
    dataset: str
    backbone: str
    compare: list[Setting]
    against: list[Setting]
    paper_datasets: list[str]
    control: list[Setting] = field(default_factory=list)
    base: list[Setting] = field(default_factory=list)

    @property
    def pairs(self) -> list[Pair]:
        return _pairs(self.compare, self.against)

    def paired(self, side: int) -> list[Setting]:
        """The settings of one side (0: compare, 1: against) that are in a pair."""
        return list(dict.fromkeys(pair[side] for pair in self.pairs))

    @property
    def aggregate(self) -> str:
        return row_aggregate(self.claim, self.paper_datasets)


def _pairs(compare: list[Setting], against: list[Setting]) -> list[Pair]:
    """Every (compare, against) pair of two different settings."""
    return [
        (c, a) for c in compare for a in against if (c.backbone, c.name) != (a.backbone, a.name)
    ]


def common_seeds(pairs: list[Pair]) -> list[int]:
    """The seeds every compared setting has (pairs are per seed)."""
    settings = [s for pair in pairs for s in pair]
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
class Context:
    """What matching a pair needs: the row, its seeds, the per-sample store, the budgets."""

    row: Row
    seeds: list[int]
    store: SampleStore
    budgets: np.ndarray

    def points(self, setting: Setting) -> list[Points]:
        return [self.store.points(setting.spec(s), _rule(self.row, setting)) for s in self.seeds]


def _grid(context: Context, first: Points, second: Points) -> tuple[np.ndarray, list[str]]:
    """The costs one seed's pair is compared at, and their labels: exit by exit (anytime),
    every exit cost of either curve inside both (anytime, `match: cost`), the single
    operating point of a one-point side at its own cost, or the Table 1 budgets."""
    claim = context.row.claim
    if claim["mode"] == "anytime" and claim["match"] != "cost":
        exits = min(len(first.costs), len(second.costs))
        return first.costs[:exits], [f"exit {k + 1}" for k in range(exits)]
    if claim["mode"] == "anytime":
        both = np.unique(np.concatenate([first.costs, second.costs]))
        low = max(first.costs.min(), second.costs.min())
        high = min(first.costs.max(), second.costs.max())
        grid = both[(both >= low) & (both <= high)]
        return grid, [f"{cost:.4g} MFLOPs" for cost in grid]
    single = [side for side in (second, first) if len(side.costs) == 1]
    if single:
        return single[0].costs, ["its operating point"]
    return context.budgets, [f"{b:.4g} MFLOPs" for b in context.budgets]


def _matched_difference(context: Context, pair: Pair) -> tuple[np.ndarray, list[str]]:
    """Per-image top-1 differences (points, compare − against) at the pair's matched
    points, seeds × Q × N; points outside a curve on some seed are dropped. A budgeted pair
    with no budget inside both curves (a curve collapsed onto a narrow band of costs, as
    EENet-released's) is compared at the operating points of its narrower curve instead."""
    values, labels = _at_shared_points(context, pair)
    if labels or context.row.claim["mode"] != "budgeted":
        return values, labels
    return _at_own_points(context, pair)


def _at_shared_points(context: Context, pair: Pair) -> tuple[np.ndarray, list[str]]:
    """The differences at `_grid`'s points (seeds × Q × N), those outside a curve dropped."""
    rows, labels, grids = [], [], []
    for first, second in zip(*(context.points(s) for s in pair), strict=True):
        grid, labels = _grid(context, first, second)
        grids.append(grid)
        if context.row.claim["mode"] == "anytime" and context.row.claim["match"] != "cost":
            exits = slice(len(grid))
            rows.append(100.0 * (first.correct[exits] * 1.0 - second.correct[exits]))
        else:
            rows.append(100.0 * (first.at(grid) - second.at(grid)))
    if labels == ["its operating point"]:  # its cost on each seed: their mean
        labels = [f"its operating point ({np.mean(grids):.4g} MFLOPs)"]
    return _inside_both(np.stack(rows), labels)


def _inside_both(values: np.ndarray, labels: list[str]) -> tuple[np.ndarray, list[str]]:
    """The points (axis 1 of seeds × Q × N differences, and their labels) that lie inside
    both curves on every seed: a point outside a curve is NaN there."""
    kept = ~np.isnan(values).any(axis=(0, 2))
    return values[:, kept], [label for label, keep in zip(labels, kept, strict=True) if keep]


def _at_own_points(context: Context, pair: Pair) -> tuple[np.ndarray, list[str]]:
    """Each operating point of the pair's narrower curve (the smaller cost span over the
    seeds) at its own cost, against the other curve there (compare − against, seeds × P ×
    N; P the same on every seed, else no point); those outside the other curve dropped."""
    by_seed = list(zip(*(context.points(s) for s in pair), strict=True))
    spans = [sum(np.ptp(points[side].costs) for points in by_seed) for side in (0, 1)]
    own = int(spans[1] < spans[0])  # 0: the compare side's points, 1: the against side's
    n_images = by_seed[0][own].correct.shape[1]
    if len({len(points[own].costs) for points in by_seed}) != 1:
        return np.empty((len(by_seed), 0, n_images)), []
    rows = []
    for points in by_seed:
        mine, other = points[own], points[1 - own]
        difference = 100.0 * (mine.correct - other.at(mine.costs))
        rows.append(difference if own == 0 else -difference)
    costs = np.mean([points[own].costs for points in by_seed], axis=0)
    name = pair[own].name
    labels = [f"operating point {k + 1} of {name} ({c:.4g} MFLOPs)" for k, c in enumerate(costs)]
    return _inside_both(np.stack(rows), labels)


def _difference_measure(context: Context, pairs: list[Pair], how: str) -> Measure | None:
    """The top-1 difference at every pair's matched points (one point, their mean, for
    `mean`); None when no pair has a point inside both curves."""
    blocks, points = [], []
    for pair in pairs:
        values, labels = _matched_difference(context, pair)
        blocks.append(values)
        points += [(pair[1].name, label) for label in labels]
    if not points:
        return None
    values = np.concatenate(blocks, axis=1)
    if how == "mean":
        values = values.mean(axis=1, keepdims=True)
        points = [("", f"mean of {len(points)} points")]
    per_seed = values.mean(axis=2)
    n_images = values.shape[2]
    image_var = values.mean(axis=0).var(axis=1, ddof=1) / n_images
    return Measure(per_seed.mean(axis=0), per_seed, image_var, n_images, points)


def _curves(points: list[Points]) -> tuple[Curve, np.ndarray]:
    """Each seed's curve (top-1 %, costs), and the per-image seed-mean correctness (P×N)."""
    top1 = np.stack([100.0 * p.correct.mean(axis=1) for p in points])
    costs = np.stack([p.costs for p in points])
    return Curve(top1, costs), 100.0 * np.mean([p.correct for p in points], axis=0)


def _ratio_measure(context: Context, pairs: list[Pair], statistic: str) -> Measure:
    """The log cost ratio per pair: on the seed-mean curves; per seed; and its image
    variance over RESAMPLES normal draws of both seed-mean curves (`stats.normal_draws`)."""
    ratio = RATIOS[statistic]
    estimates, per_seed, image_var = [], [], []
    for pair in pairs:
        (first, first_images), (second, second_images) = (_curves(context.points(s)) for s in pair)
        costs = [c.costs.mean(axis=0) for c in (first, second)]
        mean = [
            Curve(c.top1.mean(axis=0)[None], cost[None])
            for c, cost in zip((first, second), costs, strict=True)
        ]
        estimates.append(np.log(ratio(*mean))[0])
        per_seed.append(np.log(ratio(first, second)))
        images = np.concatenate([first_images, second_images])
        draws = normal_draws(images.mean(axis=1), np.cov(images) / images.shape[1])
        split = len(first_images)
        drawn = [
            Curve(part, np.broadcast_to(cost, part.shape))
            for part, cost in zip((draws[:, :split], draws[:, split:]), costs, strict=True)
        ]
        image_var.append(np.log(ratio(*drawn)).var(ddof=1))
    points = [(pair[1].name, WHOLE_CURVES) for pair in pairs]
    n_images = context.points(pairs[0][0])[0].correct.shape[1]
    return Measure(
        np.array(estimates), np.stack(per_seed, axis=1), np.array(image_var), n_images, points
    )


def measure(context: Context, pairs: list[Pair], how: str) -> Measure | None:
    """The claim's statistic over these pairs (log for ratios)."""
    statistic = context.row.claim["statistic"]
    if is_ratio(statistic):
        return _ratio_measure(context, pairs, statistic)
    return _difference_measure(context, pairs, how)


def _reported(value: float | np.ndarray, statistic: str) -> Any:
    """Back from the tested scale (log for ratios) to the reported one."""
    return np.exp(value) if is_ratio(statistic) else value


def _where(measure: Measure, point: int) -> str:
    """The binding point, and the against setting when there are several."""
    against, label = measure.points[point]
    several = len({name for name, _ in measure.points}) > 1
    if label == WHOLE_CURVES:
        return against if several else ""
    return f"{against} at {label}" if several else label


def _tested(claim: pd.Series, threshold: float, found: Measure, how: str) -> Decision:
    """The intersection–union decision of a measure about a threshold (reported scale)."""
    statistic = claim["statistic"]
    reference = np.log(threshold) if is_ratio(statistic) else threshold
    gaps = distance(found.estimate, reference, claim["expect"], claim["margin"])
    return decide(gaps, found.parts(), how)


def _interval(found: Measure, point: int, statistic: str) -> tuple[float, float, float]:
    """Estimate and LEVEL interval of one point, on the reported scale."""
    seed_se, image_se, dof = found.parts()
    low, high = t_bounds(found.estimate[point], seed_se[point], image_se[point], dof[point])
    return tuple(float(_reported(v, statistic)) for v in (found.estimate[point], low, high))


def _ci_method(found: Measure, statistic: str) -> str:
    seeds = len(found.per_seed)
    how = (
        f"t over {seeds} seeds' paired values ({seeds - 1} df) ⊕ normal over the test images"
        if seeds > 1
        else "normal over the test images alone (one seed)"
    )
    if is_ratio(statistic):
        how += f"; on the log ratio, images from {RESAMPLES} normal draws of the curves"
    return how


def _measured(context: Context, row: Row) -> dict[str, Any]:
    """Estimate and interval at the binding point, p-values, power of a prepared row."""
    claim, how = row.claim, row.aggregate
    found = measure(context, row.pairs, how)
    if found is None:
        return {"verdict": INCONCLUSIVE, "note": "no point inside both curves of any pair"}
    statistic = claim["statistic"]
    reference = UNITS[statistic][1]
    direction = _tested(claim, reference, found, how)
    estimate, low, high = _interval(found, direction.point, statistic)
    gaps = distance(
        found.estimate,
        np.log(reference) if is_ratio(statistic) else reference,
        claim["expect"],
        claim["margin"],
    )
    effect = smallest_effect(found)
    result = {
        "points": ", ".join(dict.fromkeys(label for _, label in found.points)),
        "estimate": estimate,
        "ci_low": low,
        "ci_high": high,
        "ci_method": _ci_method(found, statistic),
        "at": _where(found, direction.point),
        "p_value": direction.p_value,
        "_side": direction.side,
        "mde": float(_reported(effect, statistic)),
        "seeds_needed": seeds_needed(found, gaps, how),
        "note": _censored(context, row),
    }
    if np.isfinite(claim["magnitude"]):
        magnitude = _tested(claim, claim["magnitude"], found, how)
        result |= {"magnitude_p_value": magnitude.p_value, "_magnitude_side": magnitude.side}
    return result | _control(context, row, how)


def _censored(context: Context, row: Row) -> str:
    """For a cost ratio: whether a compared curve never reaches the top-1 it is asked to."""
    if row.claim["statistic"] != "cost_ratio_to_against_peak":
        return ""
    never = []
    for compare, against in row.pairs:
        (first, _), (second, _) = (_curves(context.points(s)) for s in (compare, against))
        peak = second.top1.mean(axis=0).max()
        if first.top1.mean(axis=0).max() < peak:
            never.append(compare.name)
    if not never:
        return ""
    return (
        f"{', '.join(never)} never reaches the against peak on the seed-mean curve: its cost "
        f"extended along its last rising segment (at most {EXTEND_AT_MOST:g}× its last cost)"
    )


def _mean_text(context: Context, pairs: list[Pair]) -> str:
    found = _difference_measure(context, pairs, "mean")
    if found is None:
        return "no common point"
    estimate, low, high = _interval(found, 0, DIFFERENCE)
    return f"{estimate:+.2f} [{low:+.2f}, {high:+.2f}]"


def _control(context: Context, row: Row, how: str) -> dict[str, Any]:
    """compare − control under the claim's own statistic and aggregate (control columns),
    and in the note what the control shows: control − base (what the control's extra
    training alone gives) beside against − base, means over the points."""
    if not row.claim["control_runs"]:
        return {}
    pairs = _pairs(row.compare, row.control)
    if not pairs:
        return {"control": f"no {row.claim['control_runs']} run"}
    lifts = [_pairs(row.control, row.base), _pairs(row.against, row.base)]
    everything = pairs + lifts[0] + lifts[1]
    seeds = common_seeds(everything)
    settings = {s for pair in everything for s in pair}
    missing = [p for s in settings for seed in seeds for p in context.store.missing(s.spec(seed))]
    if not seeds or missing:
        return {"control": f"{row.claim['control_runs']}: no common seed or per-sample outputs"}
    controlled = Context(row, seeds, context.store, context.budgets)
    found = measure(controlled, pairs, how)
    if found is None:
        return {"control": _names(row.control, row.backbone)}
    point = _tested(row.claim, UNITS[row.claim["statistic"]][1], found, how).point
    estimate, low, high = _interval(found, point, row.claim["statistic"])
    base = _names(row.base, row.backbone)
    shows = (
        f"control − {base} (its extra training alone) {_mean_text(controlled, lifts[0])} "
        f"vs {_names(row.against, row.backbone)} − {base} {_mean_text(controlled, lifts[1])}, "
        "means over the points"
    )
    return {
        "control": _names(row.control, row.backbone),
        "control_estimate": estimate,
        "control_ci_low": low,
        "control_ci_high": high,
        "_control_note": shows,
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
    seeds = common_seeds(row.pairs)
    if not seeds:
        return _not_run(f"no seed common to every compared run on {where}")
    specs = [s.spec(seed) for pair in row.pairs for s in pair for seed in seeds]
    missing = [path for spec in specs for path in store.missing(spec)]
    if missing:
        return _not_run(f"per-sample outputs missing, e.g. {missing[0]}: run the workflow")
    context = Context(row, seeds, store, _budgets(row, study))
    try:
        return {"seeds": len(seeds), **_measured(context, row)}
    except LookupError as error:
        return _not_run(str(error))


def _unique(settings: list[Setting]) -> list[Setting]:
    """Settings selected by several items of a side, once."""
    return list({(s.backbone, s.name): s for s in settings}.values())


def _dataset_rows(
    claim: pd.Series, dataset: str, study: dict[str, Any], runs: pd.DataFrame, paper: list[str]
) -> Iterator[Row]:
    """The rows of a claim on a study dataset: one per backbone of it, or a single one when
    every item names its backbone family."""
    backbones = list(study["datasets"][dataset]["backbones"])
    mine = runs[runs["dataset"] == dataset]
    columns = ("compare_runs", "against_runs", "control_runs", "control_base")
    sides = [parse_selection(claim[column]) for column in columns]
    fixed = all(item.family for items in sides[:2] for item in items)
    for backbone in [""] if fixed else backbones:
        on = backbones if fixed else [backbone]
        chosen = [
            _unique([s for item in items for s in settings_of(item, mine, on, claim["figure"])])
            for items in sides
        ]
        used = list(dict.fromkeys(s.backbone for side in chosen[:2] for s in side))
        name = backbone or " vs ".join(used) or "no backbone of " + claim["backbone"]
        yield Row(claim, dataset, name, chosen[0], chosen[1], paper, chosen[2], chosen[3])


def is_paper_backbone(claim: pd.Series, backbone: str, study_backbones: list[str]) -> bool:
    """Whether a row's backbone (or 'A vs B') is of the family the paper names ('a vs b')."""
    parts = backbone.split(" vs ")
    if not all(part in study_backbones for part in parts):
        return False
    return " vs ".join(backbone_family(part) for part in parts) == claim["backbone"]


def _row_note(claim: pd.Series, measured: dict[str, Any]) -> str:
    """The row's note: what was measured or not, what the control shows, the suite's
    choices for this claim (`suite_note`)."""
    parts = [measured.pop("note", ""), measured.pop("_control_note", ""), claim["suite_note"]]
    return "; ".join(part for part in parts if part)


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
        "paper_magnitude": claim["magnitude"],
    }
    names = claim["paper_dataset"].split("/")
    datasets = [stand_in(study, name) for name in names]
    if not any(datasets):
        note = f"no {claim['paper_dataset']} or stand-in dataset in this study"
        missing = {**_not_run(note), "is_paper_backbone": False}
        return [{**paper, **missing, "note": _row_note(claim, {"note": note})}]
    rows = []
    for dataset in dict.fromkeys(d for d in datasets if d):
        stands_for = [n for n, d in zip(names, datasets, strict=True) if d == dataset]
        backbones = list(study["datasets"][dataset]["backbones"])
        for row in _dataset_rows(claim, dataset, study, results.runs, stands_for):
            sides = {
                "dataset": dataset,
                "backbone": row.backbone,
                "is_paper_backbone": is_paper_backbone(claim, row.backbone, backbones),
                "compare": _names(row.paired(0), row.backbone) or claim["compare_runs"],
                "against": _names(row.paired(1), row.backbone) or claim["against_runs"],
            }
            measured = evaluate_row(row, store, study)
            rows.append({**paper, **sides, **measured, "note": _row_note(claim, measured)})
    return rows


def holm_verdicts(rows: pd.DataFrame, p_column: str, side_column: str) -> tuple[Any, Any]:
    """Holm-adjusted p-values across the study's rows and the verdicts they allow."""
    adjusted = holm(rows[p_column].to_numpy(dtype=np.float64))
    decided = adjusted <= 1 - LEVEL
    verdicts = np.where(decided, rows[side_column].fillna(INCONCLUSIVE), INCONCLUSIVE)
    return adjusted, np.where(rows[p_column].isna(), "", verdicts)


def build_claims(
    study: dict[str, Any], results: StudyResults, results_root: str | Path
) -> pd.DataFrame:
    """claims.csv: every claim of the paper, each on every dataset and backbone it applies
    to; direction and magnitude verdicts decided with Holm's correction across the rows."""
    store = SampleStore(Path(results_root))
    frame = pd.DataFrame(
        [
            row
            for _, claim in paper_claims().iterrows()
            for row in claim_rows(claim, study, results, store)
        ]
    )
    for column in ("p_value", "magnitude_p_value", "_side", "_magnitude_side", "verdict"):
        if column not in frame:
            frame[column] = np.nan if column.endswith("value") else None
    frame["p_holm"], verdicts = holm_verdicts(frame, "p_value", "_side")
    frame["verdict"] = np.where(
        frame["p_value"].isna(), frame["verdict"].fillna(INCONCLUSIVE), verdicts
    )
    frame["magnitude_p_holm"], frame["magnitude_verdict"] = holm_verdicts(
        frame, "magnitude_p_value", "_magnitude_side"
    )
    return frame.reindex(columns=CLAIM_COLUMNS).astype({"seeds": "Int64", "seeds_needed": "Int64"})
