"""Reliability diagrams (beyond the paper): per exit, test accuracy against confidence (max
probability) in the 15 equal-width bins of `tables/calibration_bins.csv`, before calibration
(the source run) and after it (every post-hoc run whose method's display lists this figure).

One row of panels per dataset × backbone with such a post-hoc run (wrapped after
`MAX_COLUMNS` exits), one panel per exit; seeds pooled (a bin's accuracy and confidence are
averaged over seeds weighted by its counts), the source drawn over the seeds its post-hoc runs
have. Each panel lists every curve's test ECE (mean over seeds, `tables/calibration.csv`).
Without any such run, one panel says so.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from eebench.pipelines.analysis.figures import register_figure
from eebench.pipelines.analysis.figures.common import (
    TITLE_CHARS,
    StudyTables,
    backbone_label,
    caption,
    dataset_label,
    display_of,
    finish,
    new_figure,
    note,
    save,
)
from eebench.pipelines.analysis.tables import exit_calibration

NAME = "fig_reliability"
MAX_COLUMNS = 4
PANEL_SIZE = (3.6, 3.5)  # inches: square-ish panels, the diagonal reads as such
CURVE_KEYS = ["dataset", "backbone", "method", "variant", "role"]
#: The columns of the figure's CSV (the pooled points drawn).
COLUMNS = [
    *CURVE_KEYS,
    *["exit", "bin", "lower", "upper", "count", "accuracy", "confidence", "ece_mean", "n_seeds"],
    "panel",
]
BEFORE, AFTER = "before", "after"
TEXT_BOX = {"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.0}
NOTE = (
    "Reliability: test accuracy vs confidence (max probability) in 15 equal-width bins, seeds "
    "pooled; before = the source run, after = its post-hoc calibration; ECE mean over seeds"
)


def method_dir(method: str, variant: str) -> str:
    """'method-variant', or 'method' for the default variant (a run's `source` spelling)."""
    return f"{method}-{variant}" if variant else method


def calibrated(tables: StudyTables) -> pd.DataFrame:
    """Calibration rows of post-hoc runs whose display lists this figure (role 'after')."""
    frame = exit_calibration(tables.calibration)
    frame = frame[frame["source"] != ""]
    pairs = zip(frame["method"], frame["variant"], strict=True)
    shown = np.array([NAME in display_of(m, v).figures for m, v in pairs], dtype=bool)
    return frame[shown].assign(role=AFTER)


def sources(tables: StudyTables, after: pd.DataFrame) -> pd.DataFrame:
    """Calibration rows of the runs those post-hoc runs calibrated, over the same seeds."""
    frame = exit_calibration(tables.calibration)
    dirs = [method_dir(m, v) for m, v in zip(frame["method"], frame["variant"], strict=True)]
    keyed = frame.assign(_dir=dirs)
    wanted = after[["dataset", "backbone", "seed", "source"]].drop_duplicates()
    wanted = wanted.rename(columns={"source": "_dir"})
    before = keyed.merge(wanted, on=["dataset", "backbone", "seed", "_dir"])
    return before.drop(columns="_dir").assign(role=BEFORE)


def pooled_points(tables: StudyTables, runs: pd.DataFrame) -> pd.DataFrame:
    """Per curve (dataset, backbone, method, variant, role) and exit, each bin pooled over the
    seeds of `runs` (counts summed, accuracy and confidence count-weighted), with the mean ECE."""
    keys = [*CURVE_KEYS[:4], "seed", "exit"]
    seeds = runs[[*keys, "role"]].drop_duplicates()
    bins = tables.calibration_bins.merge(seeds, on=keys)
    bins = bins[bins["count"] > 0].assign(
        acc_n=lambda f: f["accuracy"] * f["count"], conf_n=lambda f: f["confidence"] * f["count"]
    )
    group = [*CURVE_KEYS, "exit", "bin", "lower", "upper"]
    points = bins.groupby(group, sort=False)[["count", "acc_n", "conf_n"]].sum().reset_index()
    points["accuracy"] = points.pop("acc_n") / points["count"]
    points["confidence"] = points.pop("conf_n") / points["count"]
    eces = runs.groupby([*CURVE_KEYS, "exit"], sort=False)["ece"].agg(["mean", "count"])
    eces = eces.rename(columns={"mean": "ece_mean", "count": "n_seeds"}).reset_index()
    return points.merge(eces, on=[*CURVE_KEYS, "exit"])


def panel_title(dataset: str, backbone: str, exit_: int, mflops: float, datasets: int) -> str:
    """'MSDNet, exit 2 (3.1 MFLOPs)', the dataset first when the figure has several."""
    where = f"{dataset_label(dataset)} · " if datasets > 1 else ""
    return f"{where}{backbone_label(backbone)}, exit {exit_} ({mflops:.3g} MFLOPs)"


def draw_panel(ax: Axes, title: str, points: pd.DataFrame) -> None:
    """The diagonal, one reliability curve per run (before first), and their ECEs."""
    ax.set_title(textwrap.fill(title, TITLE_CHARS))
    ax.plot(
        [0, 1], [0, 1], color="0.55", linestyle=":", linewidth=1.0, label="perfectly calibrated"
    )
    lines = []
    for (method, variant, role), curve in points.groupby(["method", "variant", "role"], sort=False):
        display = display_of(method, variant)
        curve = curve.sort_values("bin")
        style = {"linestyle": "--" if role == BEFORE else "-", "markersize": 4.5}
        ax.plot(
            curve["confidence"],
            curve["accuracy"],
            color=display.color,
            marker=display.marker,
            label=f"{display.label} ({role} calibration)",
            **style,
        )
        lines.append((display.color, f"{display.label}: ECE {curve['ece_mean'].iloc[0]:.1f}%"))
    # Upper left: where an overconfident curve (below the diagonal) never goes.
    for row, (color, text) in enumerate(lines):
        ax.text(0.03, 0.96 - 0.085 * row, text, transform=ax.transAxes, ha="left", va="top",
                color=color, fontsize="x-small", bbox=TEXT_BOX)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")


def _ordered(points: pd.DataFrame) -> pd.DataFrame:
    """Before-calibration curves first, so that they are drawn (and listed) first."""
    return points.sort_values("role", key=lambda r: r != BEFORE, kind="stable")


@register_figure(NAME)
def draw(tables: StudyTables, out: Path) -> list[Path]:
    after = calibrated(tables)
    if after.empty:
        fig, axes = new_figure(1, size=PANEL_SIZE)
        axes[0].set_title(NAME.replace("_", " "))
        note(axes[0], "no post-hoc run that lists\nthis figure in this study")
        finish(fig, axes, f"{caption(tables, tables.datasets, intervals=False)}. {NOTE}")
        return save(fig, out, NAME, pd.DataFrame(columns=COLUMNS))
    runs = pd.concat([sources(tables, after), after], ignore_index=True)
    points = _ordered(pooled_points(tables, runs))
    groups = list(dict.fromkeys(zip(runs["dataset"], runs["backbone"], strict=True)))
    exits = {g: sorted(runs[(runs["dataset"] == g[0]) & (runs["backbone"] == g[1])]["exit"])
             for g in groups}  # fmt: skip
    columns = min(MAX_COLUMNS, max(len(set(e)) for e in exits.values()))
    rows = sum(math.ceil(len(set(e)) / columns) for e in exits.values())
    fig, axes = new_figure(columns, rows=rows, size=PANEL_SIZE)
    drawn, used, row = [], [], 0
    datasets = len({dataset for dataset, _ in groups})
    for dataset, backbone in groups:
        here = runs[(runs["dataset"] == dataset) & (runs["backbone"] == backbone)]
        for i, exit_ in enumerate(sorted(set(here["exit"]))):
            ax = axes[(row + i // columns) * columns + i % columns]
            mflops = here[(here["exit"] == exit_) & (here["role"] == BEFORE)]["mflops"]
            mflops = mflops if len(mflops) else here[here["exit"] == exit_]["mflops"]
            title = panel_title(dataset, backbone, exit_, float(mflops.mean()), datasets)
            mask = (points["dataset"] == dataset) & (points["backbone"] == backbone)
            panel = points[mask & (points["exit"] == exit_)]
            draw_panel(ax, title, panel)
            drawn.append(panel.assign(panel=title))
            used.append(ax)
        row += math.ceil(len(set(here["exit"])) / columns)
    for ax in axes:
        if ax not in used:
            ax.set_visible(False)
    shown = sorted({dataset for dataset, _ in groups}, key=tables.datasets.index)
    finish(fig, used, f"{caption(tables, shown, intervals=False)}. {NOTE}")
    return save(fig, out, NAME, pd.concat(drawn, ignore_index=True)[COLUMNS])
