"""`entropy`: the protocol's q-proportions on a score of its own, low entropy of each
exit's prediction, computed from every run's logits (so it applies to every run)."""

from __future__ import annotations

from typing import ClassVar

import torch

from eebench.methods.base import register_exit_rule
from eebench.methods.rules import ProportionRule


@register_exit_rule
class LowEntropy(ProportionRule):
    name: ClassVar[str] = "entropy"
    score: ClassVar[str] = "neg_entropy"
    linestyle: ClassVar[str] = ":"
    legend_suffix: ClassVar[str] = " (entropy exits)"

    def compute_score(self, logits: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits.double(), dim=-1)
        return (log_p.exp() * log_p).sum(dim=-1)  # −entropy: larger = more confident
