"""The protocol's exit rules: q-proportion thresholds fitted on val (docs/protocol.md).

For each budget index p = 1 … 39 (q = p / 20) the thresholds make target proportions
∝ q^k of the val samples leave at exit k. `max_softmax` thresholds the max softmax of
each exit's prediction (the paper's and MSDNet's protocol); `score` thresholds the
method's own exit score, for every run whose method provides one.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from eebench.methods.base import MAX_SOFTMAX, ExitRule, register_exit_rule
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.outputs import OWN_SCORE, ExitDecision, RunOutputs


def decisions_from_thresholds(
    rule: str, score: str, thresholds: np.ndarray, points: list[int], qs: list[float]
) -> list[ExitDecision]:
    """One ExitDecision per row of a (P, K) threshold array."""
    return [
        ExitDecision(rule, point, q, score, tuple(float(t) for t in row))
        for point, q, row in zip(points, qs, thresholds, strict=True)
    ]


class ProportionRule(ExitRule):
    """q-proportion thresholds on `score` for every p of the protocol."""

    generic: ClassVar[bool] = True

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        thresholds = protocol.budgeted_thresholds(outputs.val.score(self.score))
        points = list(protocol.P_VALUES)
        return decisions_from_thresholds(
            self.name, self.score, thresholds, points, [p / 20 for p in points]
        )


@register_exit_rule
class MaxSoftmaxRule(ProportionRule):
    """The paper's and MSDNet's default: the max softmax probability of each exit."""

    name: ClassVar[str] = MAX_SOFTMAX
    score: ClassVar[str] = MAX_SOFTMAX


@register_exit_rule
class OwnScoreRule(ProportionRule):
    """The method's own exit score (`val_scores`/`test_scores` of the outputs file)."""

    name: ClassVar[str] = "score"
    score: ClassVar[str] = OWN_SCORE
    linestyle: ClassVar[str] = "--"
    legend_suffix: ClassVar[str] = " (score exits)"
