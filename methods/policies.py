"""Exit policies: which per-exit score the budgeted threshold protocol ranks."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from eebench.methods.base import ExitPolicy, register_exit_policy
from eebench.pipelines.protocol import softmax_confidence


@register_exit_policy
class MaxSoftmax(ExitPolicy):
    """The paper's and MSDNet's default: the max softmax probability of each exit."""

    name: ClassVar[str] = "max_softmax"

    def scores(self, logits: np.ndarray, provided: np.ndarray | None) -> np.ndarray:
        return softmax_confidence(logits)


@register_exit_policy
class ProvidedScore(ExitPolicy):
    """The method's own exit score (`val_scores`/`test_scores` of the outputs file)."""

    name: ClassVar[str] = "score"

    def scores(self, logits: np.ndarray, provided: np.ndarray | None) -> np.ndarray:
        if provided is None:
            raise ValueError(
                "the 'score' exit policy needs val_scores/test_scores in outputs.npz; "
                "this run's method has no exit score: use the 'max_softmax' policy"
            )
        return provided.astype(np.float64)

    def applies_to(self, outputs_keys: set[str]) -> bool:
        return {"val_scores", "test_scores"} <= outputs_keys
