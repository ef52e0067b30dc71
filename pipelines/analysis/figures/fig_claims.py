"""The paper's claims tested on the study (beyond the paper's figures): a line per claim and
backbone of `tables/claims.csv` with the suite's estimate of the paper's effect and its 95%
paired interval (over seeds and test images), coloured by verdict; top-1 differences in
one panel (0: no difference), MFLOPs ratios in the other (1: the same cost); a claim the
study cannot test says `not run`. Also written as Markdown (`figures/claims.md`), with the
paper's numbers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.transforms import blended_transform_factory

from eebench.pipelines.analysis.claims import (
    CONTRADICTED,
    DIFFERENCE,
    INCONCLUSIVE,
    NOT_RUN,
    SUPPORTED,
    UNITS,
)
from eebench.pipelines.analysis.figures import IMAGE_FILES, register_figure
from eebench.pipelines.analysis.figures.common import StudyTables, caption, finish, new_figure, save
from eebench.pipelines.services.io import write_text

NAME = "claims"
VERDICT_COLORS = {
    SUPPORTED: "#2ca02c",
    CONTRADICTED: "#d62728",
    INCONCLUSIVE: "#7f7f7f",
    NOT_RUN: "#bdbdbd",
}
LABEL_CHARS = 70  # a row label is cut beyond this
ROW_HEIGHT = 0.32  # inches per claim row
BOX = {"facecolor": "white", "edgecolor": "none", "pad": 1.0}
WIDTH = 12.0  # inches: room for the row labels left of the panels
CLAIMS_NOTE = (
    "Each claim of the paper (reference/paper_claims.csv) on this study: the estimate of its "
    "effect (compare − against, top-1 points, at the exits, costs or Table 1 budgets it is "
    "about; or the MFLOPs ratio against / compare) at its binding point (the one least "
    "favourable to the claim), with that point's 95% interval: t over the seeds' paired "
    "values with the test images' variance added (one seed: the images alone). Verdicts: "
    "supported when every point's interval clears the paper's side of 0 (1 for ratios), "
    "contradicted when one point's interval, corrected for the number of points, lies on "
    "the other side, with Holm's correction across the study's rows; else inconclusive; "
    "not run: the study lacks the runs or their per-sample outputs. The magnitude verdict "
    "asks the same of the paper's smallest stated effect; mde is the smallest effect the "
    "row detects with 80% power, seeds needed what its observed spread would need to decide it"
)


def _label(row: Any) -> str:
    text = f"{row.id} {row.backbone or row.dataset or ''}: {row.claim}"
    return textwrap.shorten(text, LABEL_CHARS, placeholder="…")


def _draw_panel(ax: Axes, rows: pd.DataFrame, statistic: str) -> None:
    """One line per claim row: the estimate and its interval, or the verdict's word alone;
    right of the panel, the side of the reference line the paper puts it on."""
    unit, reference = UNITS[statistic]
    ax.axvline(reference, color="0.3", linewidth=0.8)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for y, row in enumerate(rows.itertuples()):
        color = VERDICT_COLORS[row.verdict]
        ax.text(1.01, y, f"paper: {row.paper_side}", transform=right, va="center", color="0.3")
        if np.isnan(row.estimate):
            ax.text(reference, y, row.verdict, ha="center", va="center", color=color, bbox=BOX)
            continue
        # The interval as its own line (an estimate outside it stays visible).
        ax.plot([row.ci_low, row.ci_high], [y, y], "-|", color=color, markersize=7)
        ax.plot(row.estimate, y, "o", color=color)
    for verdict in dict.fromkeys(rows["verdict"]):
        ax.plot([], [], "o", color=VERDICT_COLORS[verdict], label=verdict)
    ax.set_yticks(range(len(rows)), [_label(row) for row in rows.itertuples()])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(unit)


def _interval(row: Any) -> str:
    if np.isnan(row.estimate):
        return "–"
    where = f" at {row.at}" if row.at else ""
    return f"{row.estimate:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]{where}"


def _power(row: Any) -> str:
    if pd.isna(row.mde):
        return "–"
    needed = "more seeds do not decide it" if pd.isna(row.seeds_needed) else row.seeds_needed
    return f"{row.mde:.2f}; {needed}"


def claims_markdown(claims: pd.DataFrame, text: str) -> str:
    """The claims table as Markdown, the rows on the paper's backbone first: the paper's
    effect beside ours, both verdicts, the power."""
    lines = [
        "# The paper's claims tested on this study",
        "",
        f"{text}. {CLAIMS_NOTE}.",
        "",
        "| claim | dataset, backbone | paper's backbone | paper (its dataset) | paper's side "
        "| ours: estimate [95% CI] | unit | verdict | magnitude | mde; seeds needed | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = claims.sort_values("is_paper_backbone", ascending=False, kind="stable")
    lines += [
        f"| {row.id}: {row.claim} | {row.dataset}, {row.backbone} "
        f"| {'yes' if row.is_paper_backbone else 'no'} | {row.paper_effect} "
        f"({row.paper_dataset}) | {row.paper_side} | {_interval(row)} | {row.unit} "
        f"| {row.verdict} | {row.magnitude_verdict or '–'} | {_power(row)} | {row.note} |"
        for row in ordered.itertuples()
    ]
    return "\n".join(lines) + "\n"


@register_figure(NAME, extensions=(*IMAGE_FILES, "md"))
def draw(tables: StudyTables, out: Path) -> list[Path]:
    claims = tables.claims
    is_difference = claims["statistic"] == DIFFERENCE
    panels = [rows for rows in (claims[is_difference], claims[~is_difference]) if not rows.empty]
    heights = [len(rows) + 2 for rows in panels]
    size = (WIDTH, ROW_HEIGHT * sum(heights) / len(panels))
    fig, axes = new_figure(1, rows=len(panels), size=size, heights=heights)
    for ax, rows in zip(axes, panels, strict=True):
        _draw_panel(ax, rows, rows["statistic"].iloc[0])
    datasets = [d for d in dict.fromkeys(claims["dataset"]) if d]
    text = caption(tables, datasets or tables.datasets, intervals=False)
    finish(fig, axes, f"{text}. {CLAIMS_NOTE}")
    write_text(out / f"{NAME}.md", claims_markdown(claims, text))
    return [*save(fig, out, NAME, claims), out / f"{NAME}.md"]
