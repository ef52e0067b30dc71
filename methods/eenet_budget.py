"""`eenet_budget`: the exit rule of EENet's fits (methods/eenet.py), one decision per budget.

Exit rules see only a run's outputs, so the rule re-derives each budget's exit proportions
π̄ from the assignment outputs `eenet_assign_bJJ` on val and thresholds `eenet_score_bJJ`
with `budget_thresholds`, the function the fit selects its restarts with.
"""

from __future__ import annotations

import math
from typing import ClassVar

from eebench.methods.base import ExitRule, register_exit_rule
from eebench.methods.eenet import (
    RULE,
    SCORE_PREFIX,
    assign_name,
    budget_indices,
    budget_thresholds,
    score_name,
)
from eebench.pipelines.evaluation.outputs import ExitDecision, RunOutputs


@register_exit_rule
class EENetBudgetRule(ExitRule):
    """One decision per fitted budget j (point j): thresholds on `eenet_score_bJJ` from the
    exit proportions π̄ of its assignment outputs on val, by the §0 sequential rule."""

    name: ClassVar[str] = RULE
    score: ClassVar[str] = SCORE_PREFIX  # each decision reads its own budget's score
    legend_suffix: ClassVar[str] = " (budget fits)"

    def applies_to(self, outputs: RunOutputs) -> bool:
        return bool(budget_indices(list(outputs.val.scores)))

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        decisions = []
        for j in budget_indices(list(outputs.val.scores)):
            scores = outputs.val.score(score_name(j))
            _, thresholds = budget_thresholds(scores, outputs.val.score(assign_name(j)))
            decisions.append(
                ExitDecision(RULE, j, math.nan, score_name(j), tuple(map(float, thresholds)))
            )
        return decisions
