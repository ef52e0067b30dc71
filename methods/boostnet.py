"""`boostnet`: BoostNet (Yu et al., "Boosted Dynamic Neural Networks", AAAI 2023;
SHI-Labs/Boosted-Dynamic-Networks), spec §6: the exits as a boosted ensemble.

Exit k's head gives weak-learner logits f_k; what exit k predicts is the ensemble
F_1 = f_1, F_k = f_k + r_k·F_{k−1}, and its confidence is the max softmax of F_k (the generic
max-softmax rule reads it), in validation, evaluation and the budgeted curves alike
(`exit_output`). Training: L = Σ_k CE(f_k + r_k·stopgrad(F_{k−1}), y), so loss k trains f_k
against the earlier exits' ensemble held fixed.

Recursion (r_1 is never used). The code trains with E_0 = 0, E_k = r_k(f_k + E_{k−1}),
loss k = CE(f_k + E_{k−1}), i.e. exit k's input is f_k + r_{k−1}(f_{k−1} + E_{k−2}), but
tests with F_k = f_k + r_k·F_{k−1}: the same for a constant r (the scripts' 0.5), off by
one index otherwise. Here both use
the test-time recursion F_k = f_k + r_k·F_{k−1}, computed by one function: exit k is
trained on the ensemble it is evaluated with. `reweight` as the code's --ensemble_reweight:
one value (constant), two (linspace from r_1 to r_K) or one per exit.

Gradient rescaling (the code's msdnet_ge, on MSDNet only): after block k of K, the gradient
into the coarsest map is [∂L_head_k + (K−k−1)·∂L_later]/(K−k) (0-based k), forward unchanged.
`gradient_rescaling`: "auto" turns it on where the backbone supports it
(`supports_gradient_rescaling`: MSDNet, not RANet), "on" requires it, "off" never.

Training recipe: the code's (SGD 0.1, momentum 0.9, wd 1e-4, batch 64, ×0.1 at 150/225 of
300 epochs on CIFAR, at 30/60 of 90 on ImageNet with 4×64) is the MSDNet reference recipe
that `standard` trains with; its per-block weight decays, linearly spaced between two
values, are all 1e-4 in every script (one value here). Not here: the loss-equalisation
option (off in every script), SyncBN and DDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from eebench.methods.base import (
    TRAIN_FIGURES,
    Display,
    ExitOutput,
    HyperparameterError,
    Memory,
    StepEngine,
    StepOutput,
    TrainContext,
    TrainMethod,
    per_sample_cross_entropy,
    register_train_method,
)

RESCALING_MODES = ("auto", "on", "off")
ENSEMBLE = "ensemble"  # the memory key of F_{k−1} between exits


def reweights(values: Sequence[float], num_exits: int) -> tuple[float, ...]:
    """r_1..r_K from the `reweight` hyperparameter: one value (constant), two (linspace from
    r_1 to r_K, the code's 2-value option) or one per exit."""
    if len(values) == 1:
        return (float(values[0]),) * num_exits
    if len(values) == 2:
        return tuple(np.linspace(values[0], values[1], num_exits).tolist())
    if len(values) == num_exits:
        return tuple(float(v) for v in values)
    raise HyperparameterError(
        f"boostnet: reweight needs 1 value (constant), 2 (first, last) or one per exit "
        f"({num_exits}), got {list(values)}"
    )


def boosted(weak: Tensor, previous: Tensor | None, r: float) -> Tensor:
    """F_k = f_k + r_k·F_{k−1}; the first exit's F is its own logits."""
    return weak if previous is None else weak + r * previous


def training_inputs(logits: Sequence[Tensor], r: Sequence[float]) -> list[Tensor]:
    """Exit k's training logits f_k + r_k·stopgrad(F_{k−1}): F_k in value (the same recursion
    as inference), with gradient only into f_k."""
    inputs: list[Tensor] = []
    for k, weak in enumerate(logits):
        inputs.append(boosted(weak, inputs[-1].detach() if k else None, r[k]))
    return inputs


def rescaling_on(backbone: nn.Module, mode: str) -> bool:
    """Whether the backbone's gradient rescaling is wanted; "on" where it cannot is an error."""
    supported = getattr(backbone, "supports_gradient_rescaling", False)
    if mode not in RESCALING_MODES:
        raise HyperparameterError(
            f"boostnet: gradient_rescaling must be one of {RESCALING_MODES}, got {mode!r}"
        )
    if mode == "on" and not supported:
        name = getattr(backbone, "config_name", type(backbone).__name__)
        raise HyperparameterError(
            f"boostnet: gradient_rescaling='on', but backbone {name} cannot rescale "
            "gradients between its exits (only backbones whose later exits reach each head's "
            "input through one map can, e.g. MSDNet's coarsest scale); use 'auto' (on where "
            "supported) or 'off'"
        )
    return mode == "on" or (mode == "auto" and supported)


@register_train_method
class BoostNet(TrainMethod):
    """Boosted ensemble of the exits (spec §6); see the module docstring."""

    name: ClassVar[str] = "boostnet"
    display: ClassVar[Display] = Display("BoostNet", "#bcbd22", "p", figures=TRAIN_FIGURES)
    hparams: ClassVar[dict[str, Any]] = {
        "reweight": [0.5],  # r_k: the scripts' --ensemble_reweight 0.5
        "gradient_rescaling": "auto",
    }

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any], ctx: TrainContext) -> None:
        super().__init__(backbone, hparams, ctx)
        self.reweight = reweights(hparams["reweight"], ctx.num_exits)
        if rescaling_on(backbone, hparams["gradient_rescaling"]):
            backbone.set_gradient_rescaling(True)

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        """Σ_k CE(f_k + r_k·stopgrad(F_{k−1})); the reported logits are the ensembles F_k."""
        self.backbone.train()
        with engine.autocast():
            inputs = training_inputs(self.backbone(x), self.reweight)
            loss = sum(per_sample_cross_entropy(z, target).mean() for z in inputs)
        engine.optimize(loss)
        return StepOutput(
            loss=float(loss.detach()), logits=[z.detach() for z in inputs], targets=target
        )

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        """Exit k predicts F_k; its max softmax is the exit confidence (spec §0)."""
        ensemble = boosted(head.logits, memory[ENSEMBLE] if k else None, self.reweight[k])
        memory[ENSEMBLE] = ensemble
        return ExitOutput(ensemble, head.features)

    def extra_mflops(self) -> dict[str, np.ndarray]:
        """f_k + r_k·F_{k−1}: one multiply-add per class at every exit after the first."""
        per_exit = np.full(self.ctx.num_exits, self.ctx.num_classes / 1e6)
        per_exit[0] = 0.0
        return {"predict": per_exit}
