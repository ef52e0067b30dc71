"""`exit_temperature`: one temperature per exit, of least val NLL (LBFGS on log T); the
calibrated confidence is its exit score."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from eebench.methods.base import ExitOutput, Memory, PostHocMethod, register_posthoc_method
from eebench.pipelines.evaluation.outputs import RunOutputs


@register_posthoc_method
class ExitTemperature(PostHocMethod):
    name: ClassVar[str] = "exit_temperature"
    hparams: ClassVar[dict] = {"max_iter": 50}
    score_names: ClassVar[tuple] = ("score",)

    def fit(self, outputs: RunOutputs) -> None:  # outputs.val only: never test
        labels = torch.from_numpy(outputs.val.labels)
        found = [self._fit_exit(torch.from_numpy(z).double(), labels) for z in outputs.val.logits]
        self.register_buffer("temperatures", torch.tensor(found, dtype=torch.float32))

    def _fit_exit(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=self.hp["max_iter"])

        def nll() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(nll)
        return float(log_t.exp())

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        log_probs = F.log_softmax(head.logits.float() / self.temperatures[k], dim=-1)
        return ExitOutput(log_probs, head.features, {"score": log_probs.exp().amax(-1)})
