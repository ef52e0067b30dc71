"""A throw-away train-time method with a learned gate per exit and its own exit rule (one
operating point per run), defined here and run end to end: the gate's MFLOPs count in that
point's cost, and the point reaches the tables and Fig. 3 as a marker."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eebench.backbones.flops import module_mflops
from eebench.methods import EXIT_RULES, TRAIN_METHODS, ExitOutput, ExitRule
from eebench.methods.base import (
    TRAIN_FIGURES,
    Display,
    Memory,
    StepEngine,
    StepOutput,
    per_sample_cross_entropy,
)
from eebench.methods.inference import max_softmax
from eebench.methods.standard import Standard
from eebench.pipelines.evaluation.outputs import (
    OWN_SCORE,
    ExitDecision,
    RunOutputs,
    read_decisions,
    read_outputs,
)

RULE = "test_gate_half"


class GateHalf(ExitRule):
    """Leave at the first exit whose gate says "correct" with probability ≥ 1/2."""

    name: ClassVar[str] = RULE
    score: ClassVar[str] = OWN_SCORE
    draws_as: ClassVar[str] = "points"

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        thresholds = (*[0.5] * (outputs.num_exits - 1), -math.inf)
        return [ExitDecision(self.name, 1, math.nan, self.score, thresholds)]


class Gated(Standard):
    """Standard training plus, per exit, a gate Linear(1, 1) on the max softmax that learns
    (BCE, on detached inputs) whether the exit is right."""

    name: ClassVar[str] = "test_gated"
    score_names: ClassVar[tuple[str, ...]] = (OWN_SCORE,)
    exit_rules: ClassVar[tuple[str, ...]] = (RULE,)
    display: ClassVar[Display] = Display("gated", "#008000", "*", figures=TRAIN_FIGURES)

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.gates = nn.ModuleList(nn.Linear(1, 1) for _ in range(self.ctx.num_exits - 1))

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        """Σ_k CE of the exits plus each gate's BCE on whether its exit is right."""
        self.train()
        logits = self.backbone(x)
        loss = sum(per_sample_cross_entropy(z, target).mean() for z in logits)
        for gate, z in zip(self.gates, logits, strict=False):
            right = (z.argmax(-1) == target).float()
            confidence = max_softmax(z.detach()).float()[:, None]
            loss = loss + F.binary_cross_entropy_with_logits(gate(confidence)[:, 0], right)
        engine.optimize(loss)
        return StepOutput(float(loss.detach()), [z.detach() for z in logits], target)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.gates.parameters()]

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        if k == len(self.gates):
            gate = torch.ones(head.logits.shape[0])
        else:
            gate = torch.sigmoid(self.gates[k](max_softmax(head.logits).float()[:, None]))[:, 0]
        return ExitOutput(head.logits, head.features, {OWN_SCORE: gate})

    def extra_mflops(self) -> dict[str, np.ndarray]:
        one = torch.zeros(1, 1)
        per_gate = [module_mflops(nn.Sequential(g, nn.Sigmoid()), one) for g in self.gates]
        return {OWN_SCORE: np.array([*per_gate, 0.0])}


@pytest.fixture(scope="module")
def root(
    tmp_path_factory: pytest.TempPathFactory, extension_kit: SimpleNamespace
) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TRAIN_METHODS._entries, Gated.name, Gated)
        patch.setitem(EXIT_RULES._entries, GateHalf.name, GateHalf)
        study = extension_kit.tiny_study([{"method": Gated.name}])
        yield extension_kit.run_study(study, tmp_path_factory.mktemp("gated") / "extension")


def run_dir(root: Path) -> Path:
    return root / "runs/synthetic/msdnet_fmnist" / Gated.name / "seed0"


def test_its_rule_is_saved_with_one_point(root: Path) -> None:
    (decision,) = [d for d in read_decisions(run_dir(root)) if d.rule == RULE]
    assert decision.score == OWN_SCORE and decision.thresholds[:-1] == (0.5, 0.5, 0.5)


def test_the_point_costs_the_gates_too(root: Path, extension_kit: SimpleNamespace) -> None:
    """Exits and cost recomputed by hand from the saved gate scores and backbone costs."""
    outputs = read_outputs(run_dir(root))
    gates = outputs.test.scores[OWN_SCORE]
    exits = np.argmax(np.vstack([gates[:-1] >= 0.5, np.ones((1, gates.shape[1]), bool)]), axis=0)
    gate_mflops = 3e-6  # Linear(1, 1) (1 MAC + 1 bias) + sigmoid (1) in the MSDNet convention
    costs = outputs.flops + gate_mflops * np.minimum(np.arange(1, 5), 3)
    np.testing.assert_allclose(outputs.costs(OWN_SCORE), costs)
    (row,) = (
        extension_kit.rows_of(root, "tables/budgeted.csv", Gated.name)
        .query("policy == @RULE")
        .itertuples()
    )
    assert np.isnan(row.q) and row.p == 1
    assert row.mflops == pytest.approx(costs[exits].mean())
    correct = outputs.test.correct[exits, np.arange(len(exits))]
    assert row.top1 == pytest.approx(100 * correct.mean())


def test_fig3_draws_the_point_as_a_marker(root: Path, extension_kit: SimpleNamespace) -> None:
    drawn = extension_kit.rows_of(root, "figures/fig3_budgeted.csv", Gated.name)
    assert drawn.groupby("policy").size().to_dict() == {"max_softmax": 39, "score": 39, RULE: 1}
    assert EXIT_RULES.get("max_softmax").draws_as == "curve"
