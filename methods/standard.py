"""`standard`: the MSDNet/RANet reference training, Σ_k CE(z_k, y) over all exits, unweighted."""

from __future__ import annotations

from typing import ClassVar

import torch

from eebench.methods.base import (
    POSTHOC_FIGURES,
    TRAIN_FIGURES,
    Display,
    StepEngine,
    StepOutput,
    TrainMethod,
    per_sample_cross_entropy,
    register_train_method,
)


@register_train_method
class Standard(TrainMethod):
    name: ClassVar[str] = "standard"
    hparams: ClassVar[dict] = {}
    # The reference of every comparison, post-hoc ones included.
    display: ClassVar[Display] = Display(
        "standard", "#1f77b4", "o", figures=(*TRAIN_FIGURES, *POSTHOC_FIGURES)
    )

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        self.backbone.train()
        with engine.autocast():
            logits = self.backbone(x)
            loss = sum(per_sample_cross_entropy(z, target).mean() for z in logits)
        engine.optimize(loss)
        return StepOutput(
            loss=float(loss.detach()), logits=[z.detach() for z in logits], targets=target
        )
