"""`distill`: every exit learns the labels and, from the last exit, its softened predictions
(self-distillation of the last exit into the earlier ones); `strong` leans on the teacher."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from eebench.methods.base import (
    StepEngine,
    StepOutput,
    TrainMethod,
    per_sample_cross_entropy,
    register_train_method,
)


@register_train_method
class Distill(TrainMethod):
    name: ClassVar[str] = "distill"
    hparams: ClassVar[dict] = {"alpha": 0.5, "temperature": 3.0}
    variants: ClassVar[dict] = {"strong": {"hparams": {"alpha": 0.9}}}

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        self.backbone.train()
        alpha, t = self.hp["alpha"], self.hp["temperature"]
        with engine.autocast():
            logits = self.backbone(x)
            teacher = F.softmax(logits[-1].detach().float() / t, dim=-1)
            loss = per_sample_cross_entropy(logits[-1], target).mean()
            for z in logits[:-1]:
                hard = per_sample_cross_entropy(z, target).mean()
                soft = per_sample_cross_entropy(z / t, teacher).mean() * t**2
                loss = loss + (1 - alpha) * hard + alpha * soft
        engine.optimize(loss)
        return StepOutput(
            loss=float(loss.detach()), logits=[z.detach() for z in logits], targets=target
        )
