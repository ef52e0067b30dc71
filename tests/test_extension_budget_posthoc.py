"""A throw-away budget-aware post-hoc method, defined here and run end to end: it fits a
temperature on val, and its own exit rule picks, per target budget, one threshold for all
exits such that the val cost stays within the budget. Its curves reach Fig. 4."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch

from eebench.methods import EXIT_RULES, POSTHOC_METHODS, ExitOutput, ExitRule, PostHocMethod
from eebench.methods.base import Display, Memory
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.outputs import (
    OWN_SCORE,
    ExitDecision,
    RunOutputs,
    read_decisions,
    read_outputs,
)

RULE = "test_budget_threshold"
FRACTIONS = (0.4, 0.6, 0.8)


class BudgetThreshold(ExitRule):
    """For each budget (a fraction of the last exit's cost), the largest common threshold
    whose val cost fits (the fewest early exits); val only."""

    name: ClassVar[str] = RULE
    score: ClassVar[str] = OWN_SCORE

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        scores = outputs.val.scores[self.score]
        costs = outputs.costs(self.score)
        candidates = np.unique(scores[:-1])[::-1]
        decisions = []
        for point, fraction in enumerate(FRACTIONS, start=1):
            for t in candidates:  # descending: the first that fits exits the most samples late
                thresholds = np.array([*[t] * (len(costs) - 1), -math.inf])
                exits = protocol.assign_exits(scores, thresholds[None])[0]
                if costs[exits].mean() <= fraction * costs[-1]:
                    break
            decisions.append(ExitDecision(RULE, point, math.nan, self.score, tuple(thresholds)))
        return decisions


class Tempered(PostHocMethod):
    """One temperature for all exits, the one of least val NLL on a grid."""

    name: ClassVar[str] = "test_tempered"
    score_names: ClassVar[tuple[str, ...]] = (OWN_SCORE,)
    exit_rules: ClassVar[tuple[str, ...]] = (RULE,)
    display: ClassVar[Display] = Display(
        "tempered", "#800000", "^", figures=("fig4_posthoc",), main_rule=RULE
    )

    def fit(self, outputs: RunOutputs) -> None:
        logits = torch.from_numpy(outputs.val.logits).double()
        labels = torch.from_numpy(outputs.val.labels)
        grid = torch.tensor([0.5, 1.0, 2.0, 4.0])
        nll = [torch.nn.functional.cross_entropy(logits.flatten(0, 1) / t,
               labels.repeat(logits.shape[0])) for t in grid]  # fmt: skip
        self.register_buffer("temperature", grid[int(torch.stack(nll).argmin())])

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        probs = torch.softmax(head.logits / self.temperature, dim=-1)
        return ExitOutput(probs.log(), head.features, {OWN_SCORE: probs.amax(dim=-1)})


@pytest.fixture(scope="module")
def root(
    tmp_path_factory: pytest.TempPathFactory, extension_kit: SimpleNamespace
) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(POSTHOC_METHODS._entries, Tempered.name, Tempered)
        patch.setitem(EXIT_RULES._entries, BudgetThreshold.name, BudgetThreshold)
        study = extension_kit.tiny_study([{"method": "standard"}, {"method": Tempered.name}])
        yield extension_kit.run_study(study, tmp_path_factory.mktemp("posthoc") / "extension")


def run_dir(root: Path) -> Path:
    return root / "runs/synthetic/msdnet_fmnist" / Tempered.name / "seed0"


def test_each_budget_is_met_on_val_by_the_saved_thresholds(root: Path) -> None:
    outputs = read_outputs(run_dir(root))
    decisions = [d for d in read_decisions(run_dir(root)) if d.rule == RULE]
    assert [d.point for d in decisions] == [1, 2, 3]
    costs = outputs.costs(OWN_SCORE)
    for decision, fraction in zip(decisions, FRACTIONS, strict=True):
        exits = protocol.assign_exits(
            outputs.val.scores[OWN_SCORE], np.array([decision.thresholds])
        )
        assert costs[exits[0]].mean() <= fraction * costs[-1]


def test_fitted_on_val_only_and_saved(root: Path) -> None:
    state = torch.load(run_dir(root) / "model.pt", weights_only=True)["method"]
    assert set(state) == {"temperature"}


def test_its_curves_reach_the_tables_and_fig4(root: Path, extension_kit: SimpleNamespace) -> None:
    budgeted = extension_kit.rows_of(root, "tables/budgeted.csv", Tempered.name)
    assert budgeted.groupby("policy").size().to_dict() == {"max_softmax": 39, "score": 39, RULE: 3}
    drawn = extension_kit.rows_of(root, "figures/fig4_posthoc.csv", Tempered.name)
    assert set(drawn["policy"]) == {RULE} and len(drawn) == 3
    standard = extension_kit.rows_of(root, "figures/fig4_posthoc.csv", "standard")
    assert set(standard["policy"]) == {"max_softmax"}
