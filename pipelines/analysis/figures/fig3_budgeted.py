"""Figure 3 (budgeted batch classification): top-1 against the average cost per image, a
panel per dataset, one curve per backbone × method (variant) whose display lists this figure
and per exit rule fitted for its runs (each rule in its own line style), or per rule its
display names: frozen + Ours only under the gater's score, as max softmax makes it standard."""

from __future__ import annotations

from pathlib import Path

from eebench.pipelines.analysis.figures import register_figure
from eebench.pipelines.analysis.figures.common import (
    StudyTables,
    budgeted_panel,
    per_dataset_figure,
)

NAME = "fig3_budgeted"
PAPER_FIGURE = "fig3"  # its numbers in the paper's reported CSV


@register_figure(NAME)
def draw(tables: StudyTables, out: Path) -> list[Path]:
    return per_dataset_figure(tables, NAME, PAPER_FIGURE, budgeted_panel, out)
