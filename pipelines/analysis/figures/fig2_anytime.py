"""Figure 2 (anytime prediction): per-exit top-1 against the exit's cost, a panel per dataset,
one line per backbone × method (variant) whose display lists this figure."""

from __future__ import annotations

from pathlib import Path

from eebench.pipelines.analysis.figures import register_figure
from eebench.pipelines.analysis.figures.common import StudyTables, anytime_panel, per_dataset_figure

NAME = "fig2_anytime"
PAPER_FIGURE = "fig2"  # its numbers in the paper's reported CSV


@register_figure(NAME)
def draw(tables: StudyTables, out: Path) -> list[Path]:
    return per_dataset_figure(tables, NAME, PAPER_FIGURE, anytime_panel, out)
