"""Figure 4 (post-hoc methods): budgeted curves on CIFAR-100 or the dataset standing in for
it, a panel per backbone family of the study, one curve per run of a method (variant) whose
display lists this figure, under that method's main exit rule only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eebench.backbones import get_model_config
from eebench.pipelines.analysis.figures import register_figure
from eebench.pipelines.analysis.figures.common import (
    Panel,
    StudyTables,
    curve_figure,
    displays,
    shown_in,
    stand_in_title,
)
from eebench.pipelines.analysis.tables import backbone_family

NAME = "fig4_posthoc"
PAPER_DATASET = "cifar100"


def families(tables: StudyTables) -> dict[str, str]:
    """Each backbone family of the study, in study order, with its label."""
    labels: dict[str, str] = {}
    for backbone in tables.backbones:
        config = get_model_config(backbone)
        labels.setdefault(config.family, config.family_label or config.family)
    return labels


def main_rule_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run's curve under its method's main exit rule (post-hoc methods: their own score),
    so that every method is compared on the rule it is meant to be deployed with."""
    rules = [display.main_rule for display in displays(frame)]
    return frame[frame["policy"] == pd.Series(rules, index=frame.index, dtype=object)]


@register_figure(NAME)
def draw(tables: StudyTables, out: Path) -> list[Path]:
    dataset, where = stand_in_title(tables, PAPER_DATASET)
    rows = main_rule_rows(shown_in(tables.budgeted, dataset, NAME))
    family = rows["backbone"].map(backbone_family)
    no_paper = tables.paper.iloc[:0]  # the paper's Fig. 4 reports no numbers in its text
    panels = [
        Panel(f"{label} — {where}", rows[family == name], no_paper, budgeted=True)
        for name, label in families(tables).items()
    ]
    return curve_figure(tables, NAME, panels, [dataset], out)
