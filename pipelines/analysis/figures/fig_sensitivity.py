"""Sensitivity (beyond the paper): top-1 at the Table 1 budgets against each hyperparameter a
train-time method sweeps (its `Sweep`s), a row of panels per dataset/backbone/method with a
sweep, one line per budget in shades of the method's colour; notes when the study has none.

A sweep's points are the runs of the variants that change only its hyperparameter, plus the
method's default variant (a point of every sweep), on dataset/backbone pairs with at least
one sweep variant. x values are the runs' own resolved hyperparameters (runs.csv).
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Iterator
from pathlib import Path

import matplotlib as mpl
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from eebench.methods import TRAIN_METHODS, Display
from eebench.methods.base import Sweep
from eebench.pipelines.analysis.figures import register_figure
from eebench.pipelines.analysis.figures.common import (
    INTERPOLATION_NOTE,
    TITLE_CHARS,
    StudyTables,
    backbone_label,
    budget_label,
    caption,
    display_of,
    draw_curve,
    finish,
    new_figure,
    note,
    panel_title,
    save,
)
from eebench.pipelines.analysis.tables import (
    INTERVAL_COLUMNS,
    n_test_by_dataset,
    run_hparams,
    summarise,
    top1_at_budgets,
)

NAME = "fig_sensitivity"
KEYS = ["dataset", "backbone", "method", "hparam", "variant", "value", "budget_mflops"]
SUMMARY_COLUMNS = [*KEYS, "top1_mean", "top1_std", "n_seeds", *INTERVAL_COLUMNS]
#: The note panel of a study where no registered method declares a sweep.
ANY_SWEEP = Sweep("", "hyperparameter", "")
SENSITIVITY_NOTE = f"{INTERPOLATION_NOTE}; a budget outside a curve's cost range is not drawn."

Row = tuple[str, str, str]  # dataset, backbone, method


def declared_sweeps() -> list[Sweep]:
    """Every sweep that a registered train-time method declares (the note panels' titles)."""
    sweeps = (s for method in TRAIN_METHODS for s in TRAIN_METHODS.get(method).sweeps)
    return list(dict.fromkeys(sweeps)) or [ANY_SWEEP]


def _swept_runs(tables: StudyTables, method: str) -> Iterator[tuple[pd.Series, list[Sweep]]]:
    """The runs of `method` that are sweep points, each with the sweeps it is a point of."""
    cls = TRAIN_METHODS.get(method)
    by_hparam = {sweep.hparam: sweep for sweep in cls.sweeps}
    runs = tables.runs[tables.runs["method"] == method]
    swept = [by_hparam.get(cls.swept_hparam(variant) or "") for variant in runs["variant"]]
    pairs = zip(runs["dataset"], runs["backbone"], swept, strict=True)
    with_sweep = {(dataset, backbone) for dataset, backbone, sweep in pairs if sweep}
    for (_, run), sweep in zip(runs.iterrows(), swept, strict=True):
        sweeps = [sweep] if sweep else list(cls.sweeps) if run["variant"] == "" else []
        if sweeps and (run["dataset"], run["backbone"]) in with_sweep:
            yield run, sweeps


def sensitivity_points(tables: StudyTables) -> pd.DataFrame:
    """Top-1 (mean, std, n_seeds, 95% interval) at the Table 1 budgets of every swept value
    of every method with sweeps; budgets outside a curve (NaN) are left out."""
    rows = []
    for method in TRAIN_METHODS:
        for run, sweeps in _swept_runs(tables, method):
            budgets, top1 = top1_at_budgets(tables.study, tables.budgeted_by_seed, run)
            hparams = run_hparams(run)
            ident = (run["dataset"], run["backbone"], method)
            rows += [
                (*ident, sweep.hparam, run["variant"], hparams[sweep.hparam], budget, value)
                for sweep in sweeps
                for budget, value in zip(budgets, top1, strict=True)
            ]
    points = pd.DataFrame(rows, columns=[*KEYS, "top1"]).dropna(subset=["top1"])
    if points.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    return summarise(points, KEYS, ["top1"], n_test_by_dataset(tables.runs))


def _budget_styles(points: pd.DataFrame, method: str) -> dict[float, Display]:
    """The method's marker in shades of its colour: the larger the budget, the darker (the
    same shade for a budget in every panel of the method)."""
    display = display_of(method)
    budgets = sorted(points.loc[points["method"] == method, "budget_mflops"].unique())
    shades = sns.light_palette(display.color, n_colors=len(budgets) + 2)[2:]
    return {
        budget: Display(budget_label(budget), mpl.colors.to_hex(shade), display.marker)
        for budget, shade in zip(budgets, shades, strict=True)
    }


def _draw_sweep(
    ax: Axes, points: pd.DataFrame, sweep: Sweep, title: str, styles: dict[float, Display]
) -> None:
    """One line per budget against the swept value; a dotted line at the default variant's."""
    ax.set_title(textwrap.fill(f"{sweep.symbol} sweep — {title}", TITLE_CHARS))
    for budget, line in points.groupby("budget_mflops"):
        style = styles[budget]
        draw_curve(ax, line, style, "value", label=style.label, markersize=5, linewidth=1.4)
    default = points.loc[points["variant"] == "", "value"].unique()
    for value in default:
        ax.axvline(value, color="0.5", linestyle=":", linewidth=1.0, label="default variant")
    if sweep.log:
        ax.set_xscale("log")
    values = sorted(points["value"].unique())
    ax.set_xticks(values, [f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set_xlabel(sweep.xlabel)
    ax.set_ylabel("top-1 accuracy (%)")


def _draw_notes(axes: list[Axes], sweeps: list[Sweep]) -> None:
    """A note panel per declared sweep, for a study without any."""
    symbols = "/".join(sweep.symbol for sweep in sweeps)
    for ax, sweep in zip(axes, sweeps, strict=True):
        ax.set_title(f"{sweep.symbol} sweep")
        note(ax, f"no {symbols} sweep in this study;\nsee config/paper.yaml")


def _draw_row(tables: StudyTables, axes: list[Axes], points: pd.DataFrame, row: Row) -> None:
    """The panels of one dataset/backbone/method: one per sweep of the method, then blanks."""
    dataset, backbone, method = row
    title = f"{panel_title(tables, dataset)}, {backbone_label(backbone)}, "
    title += display_of(method).label
    mine = points[
        (points["dataset"] == dataset)
        & (points["backbone"] == backbone)
        & (points["method"] == method)
    ]
    styles = _budget_styles(points, method)
    sweeps = TRAIN_METHODS.get(method).sweeps
    for ax, sweep in itertools.zip_longest(axes, sweeps):
        if sweep is None:
            ax.axis("off")
        else:
            _draw_sweep(ax, mine[mine["hparam"] == sweep.hparam], sweep, title, styles)


@register_figure(NAME)
def draw(tables: StudyTables, out: Path) -> list[Path]:
    """Mean and 95% interval per point; notes when no run of the study is a sweep point."""
    points = sensitivity_points(tables)
    rows: list[Row] = list(
        dict.fromkeys(zip(points["dataset"], points["backbone"], points["method"], strict=True))
    )
    sweeps = declared_sweeps()
    columns = max((len(TRAIN_METHODS.get(m).sweeps) for *_, m in rows), default=len(sweeps))
    fig, axes = new_figure(columns, rows=max(1, len(rows)))
    if not rows:
        _draw_notes(axes, sweeps)
    for index, row in enumerate(rows):
        _draw_row(tables, axes[index * columns : (index + 1) * columns], points, row)
    datasets = list(dict.fromkeys(dataset for dataset, *_ in rows)) or tables.datasets
    finish(fig, axes, f"{caption(tables, datasets)}. {SENSITIVITY_NOTE}")
    return save(fig, out, NAME, points)
