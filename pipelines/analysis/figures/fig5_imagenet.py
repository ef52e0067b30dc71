"""Figure 5 (ImageNet): anytime (left) and budgeted (right) curves on ImageNet or the dataset
standing in for it, of the methods (variants) whose display lists this figure."""

from __future__ import annotations

from pathlib import Path

from eebench.pipelines.analysis.figures import register_figure
from eebench.pipelines.analysis.figures.common import (
    StudyTables,
    anytime_panel,
    budgeted_panel,
    curve_figure,
    stand_in_title,
)

NAME = "fig5_imagenet"
PAPER_FIGURE = "fig5"  # its numbers in the paper's reported CSV
PAPER_DATASET = "imagenet"


@register_figure(NAME)
def draw(tables: StudyTables, out: Path) -> list[Path]:
    dataset, where = stand_in_title(tables, PAPER_DATASET)
    panels = [
        anytime_panel(tables, f"{where}: anytime", dataset, NAME, PAPER_FIGURE),
        budgeted_panel(tables, f"{where}: budgeted", dataset, NAME, PAPER_FIGURE),
    ]
    return curve_figure(tables, NAME, panels, [dataset], out)
