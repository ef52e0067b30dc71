"""Table 1: top-1 at the dataset's budgets of the runs that form the table's rows (as the
methods declare them with `TableRows`), one grid per dataset/backbone, drawn as an image
and also written as Markdown and LaTeX, with the paper's value beside ours where it has one
(in the CSV: the paper's rows of the same datasets and backbone families, `source` = paper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from eebench.methods import TRAIN_METHODS
from eebench.pipelines.analysis.figures import IMAGE_FILES, register_figure
from eebench.pipelines.analysis.figures.common import (
    INTERPOLATION_NOTE,
    OURS,
    PAPER,
    REPORTED_IN,
    SOURCE,
    StudyTables,
    budget_label,
    caption,
    dataset_label,
    finish,
    new_figure,
    note,
    save,
)
from eebench.pipelines.analysis.tables import TABLE1, backbone_family, paper_method
from eebench.pipelines.services.io import write_text

NAME = TABLE1
#: The column of tables/table1*.csv that holds each run's row label.
ROW_COLUMN = "features"
TABLE1_NOTE = (
    f"{INTERPOLATION_NOTE}; – = budget outside the curve's cost range; ± = std over seeds, or "
    "with one seed half the width of the 95% binomial (Wilson) interval over the test images, "
    "inside which differences are sampling noise (paired tests: figures/claims)"
)
NO_RUNS = "No Table 1 runs in this study"


def row_order() -> list[str]:
    """The row labels in the order the methods declare them (registry order of methods)."""
    labels = (
        label
        for method in TRAIN_METHODS
        for rows in TRAIN_METHODS.get(method).table_rows
        if rows.table == TABLE1
        for label in rows.order
    )
    return list(dict.fromkeys(labels))


def _row_labels(labels: pd.Series) -> list[str]:
    """The labels present, in the declared order, then any other in order of appearance."""
    present = list(dict.fromkeys(labels))
    declared = [label for label in row_order() if label in present]
    return [*declared, *(label for label in present if label not in declared)]


def _cell(point: Any, paper: float, pm: str) -> str:
    """'mean ± std' (several seeds) or 'mean ± half the binomial interval' (one seed)."""
    if np.isnan(point.top1_mean):
        return "–"
    spread = point.top1_std if point.n_seeds > 1 else (point.top1_ci_high - point.top1_ci_low) / 2
    text = f"{point.top1_mean:.2f} {pm} {spread:.2f}"
    return text if np.isnan(paper) else f"{text} (paper {paper:.2f})"


def _paper_table1(
    tables: StudyTables, dataset: str, backbone: str
) -> dict[tuple[str, float], float]:
    """Paper Table 1 values of this dataset and backbone family, by (row label, budget)."""
    paper = tables.paper
    rows = paper[
        (paper["figure"] == TABLE1)
        & (paper["dataset"] == dataset)
        & (paper["backbone"] == backbone_family(backbone))
    ]
    return {
        (paper_method(row.method)[1], float(row.budget_mflops)): row.top1
        for row in rows.itertuples()
    }


def table1_data(tables: StudyTables) -> pd.DataFrame:
    """Our Table 1 points, then the paper's of the same datasets and backbone families (its
    backbone column holds the family, as the paper names backbones)."""
    ours = tables.table1.assign(**{SOURCE: OURS, REPORTED_IN: ""})
    shown = set(zip(ours["dataset"], ours["backbone"].map(backbone_family), strict=True))
    paper = tables.paper[tables.paper["figure"] == TABLE1]
    pairs = zip(paper["dataset"], paper["backbone"], strict=True)
    paper = paper[[pair in shown for pair in pairs]]
    if paper.empty:
        return ours
    reported = pd.DataFrame(
        {
            "dataset": paper["dataset"],
            "backbone": paper["backbone"],
            ROW_COLUMN: [paper_method(name)[1] for name in paper["method"]],
            "budget_mflops": paper["budget_mflops"].astype(float),
            "top1_mean": paper["top1"],
            SOURCE: PAPER,
            REPORTED_IN: paper["source"],
        }
    )
    return pd.concat([ours, reported], ignore_index=True)


def table1_grids(tables: StudyTables, pm: str = "±") -> dict[str, pd.DataFrame]:
    """Per dataset/backbone: a grid of cells, row labels as rows, budgets as columns."""
    grids = {}
    for (dataset, backbone), group in tables.table1.groupby(["dataset", "backbone"], sort=False):
        paper = _paper_table1(tables, dataset, backbone)
        cells: dict[str, dict[str, str]] = {}
        for point in group.itertuples():
            label = getattr(point, ROW_COLUMN)
            reported = paper.get((label, float(point.budget_mflops)), np.nan)
            cells.setdefault(budget_label(point.budget_mflops), {})[label] = _cell(
                point, reported, pm
            )
        columns = [budget_label(b) for b in sorted(group["budget_mflops"].unique())]
        grid = pd.DataFrame(cells).reindex(index=_row_labels(group[ROW_COLUMN]), columns=columns)
        grids[f"{dataset_label(dataset)}, {backbone}"] = grid.fillna("–")
    return grids


def table1_markdown(tables: StudyTables, text: str) -> str:
    lines = [
        "# Table 1: top-1 (%) in budgeted batch classification by gater features",
        "",
        f"{text}. {TABLE1_NOTE}",
        "",
    ]
    grids = table1_grids(tables)
    if not grids:
        lines.append(f"{NO_RUNS}.")
    for title, grid in grids.items():
        lines += [
            f"## {title}",
            "",
            f"| {ROW_COLUMN} | " + " | ".join(grid.columns) + " |",
            "|---|" + "---:|" * len(grid.columns),
        ]
        lines += [f"| {row} | " + " | ".join(grid.loc[row]) + " |" for row in grid.index]
        lines.append("")
    return "\n".join(lines)


def _tex(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
        ("–", "--"),
        ("—", "---"),
    ):
        text = text.replace(char, escaped)
    return text


def _tex_table(title: str, grid: pd.DataFrame, text: str) -> str:
    """One booktabs table."""
    header = " & ".join([ROW_COLUMN.capitalize(), *map(_tex, grid.columns)])
    body = [
        " & ".join([_tex(row), *(c.replace("–", "--") for c in grid.loc[row])]) + r" \\"
        for row in grid.index
    ]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{Top-1 (\%) on {_tex(title)} by gater features. {_tex(text)}. "
            rf"{_tex(TABLE1_NOTE)}}}",
            r"\begin{tabular}{l" + "r" * len(grid.columns) + "}",
            r"\toprule",
            header + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
        ]
    )


def table1_latex(tables: StudyTables, text: str) -> str:
    """booktabs tables, one per dataset/backbone."""
    grids = table1_grids(tables, pm=r"$\pm$")
    if not grids:
        return f"% {NO_RUNS}.\n"
    return "\n\n".join(_tex_table(title, grid, text) for title, grid in grids.items()) + "\n"


def _draw_grid(ax: Axes, title: str, grid: pd.DataFrame) -> None:
    """One grid as a matplotlib table."""
    ax.set_title(f"Table 1 — {title}: top-1 (%)")
    table = ax.table(
        cellText=grid.to_numpy(),
        rowLabels=list(grid.index),
        colLabels=list(grid.columns),
        loc="center",
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(-1, len(grid.columns))))
    table.scale(1.0, 1.3)


@register_figure(NAME, extensions=(*IMAGE_FILES, "md", "tex"))
def draw(tables: StudyTables, out: Path) -> list[Path]:
    """Table 1 rendered as an image (PNG/PDF), plus its Markdown and LaTeX versions."""
    datasets = list(tables.table1["dataset"].unique())
    text = caption(tables, datasets or tables.datasets, intervals=False)
    grids = table1_grids(tables)
    columns = max((len(grid.columns) for grid in grids.values()), default=4)
    lines = max((len(grid) for grid in grids.values()), default=1)
    size = (2.0 + 1.6 * columns, 0.9 + 0.3 * lines)
    fig, axes = new_figure(1, rows=max(1, len(grids)), size=size)
    for ax in axes:
        ax.axis("off")
    if not grids:
        note(axes[0], NO_RUNS)
    for ax, (title, grid) in zip(axes, grids.items(), strict=False):
        _draw_grid(ax, title, grid)
    finish(fig, axes, f"{text}. {TABLE1_NOTE}")
    write_text(out / f"{NAME}.md", table1_markdown(tables, text))
    write_text(out / f"{NAME}.tex", table1_latex(tables, text))
    data = table1_data(tables)
    return [*save(fig, out, NAME, data), out / f"{NAME}.md", out / f"{NAME}.tex"]
