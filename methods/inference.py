"""Exit-by-exit inference: the one path that evaluation, validation during training,
post-hoc calibration and real early exit all take.

A backbone with the stage interface (`init_state`, `forward_stage`, `select_state`)
runs one exit at a time; after each exit the methods' hooks (`exit_output` of the
train-time method, then of a post-hoc method on top of it) decide what that exit
predicts and scores. The state (backbone tensors and every hook's per-sample memory)
is batch-first, so `select` drops the samples that left and `concat` joins the samples of
several batches waiting for the same exit (pooled early exit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from eebench.methods.base import (
    MAX_SOFTMAX,
    ExitHook,
    ExitOutput,
    Memory,
    check_returned,
    computed_scores,
)

State = list[Tensor]


class StagedBackbone(Protocol):
    """The stage interface of `eebench.backbones.MultiExitNet`."""

    num_exits: int

    def init_state(self, x: Tensor) -> State: ...

    def forward_stage(self, k: int, state: State) -> tuple[State, Tensor, Tensor]: ...

    def select_state(self, state: State, index: Tensor) -> State: ...


def max_softmax(logits: Tensor) -> Tensor:
    """Max softmax probability per row, in float64 as 1 / Σ_c exp(z_c − max z) (the same
    formula as `protocol.softmax_confidence`, so thresholds fitted there apply here)."""
    z = logits.double()
    return 1.0 / (z - z.max(dim=-1, keepdim=True).values).exp().sum(dim=-1)


def concat_states(states: Sequence[State]) -> State:
    """Batch-first states of the same stage, joined sample-wise in order; a tensor listed
    twice in a state (RANet: a block's output is also its last export) stays shared."""
    first_position: dict[int, int] = {}
    joined: list[Tensor] = []
    for i, t in enumerate(states[0]):
        j = first_position.setdefault(id(t), i)
        joined.append(joined[j] if j < i else torch.cat([state[i] for state in states]))
    return joined


@dataclass
class InferenceState:
    """Where a batch is: the next exit, the backbone's tensors, each hook's memory."""

    k: int
    backbone: State
    memories: list[Memory]


class ExitByExit:
    """Runs a backbone exit by exit through a chain of method hooks."""

    def __init__(self, backbone: StagedBackbone, hooks: Sequence[ExitHook]) -> None:
        self.backbone = backbone
        self.hooks = list(hooks)

    @property
    def num_exits(self) -> int:
        return self.backbone.num_exits

    def start(self, x: Tensor) -> InferenceState:
        return InferenceState(0, self.backbone.init_state(x), [{} for _ in self.hooks])

    def next_exit(self, state: InferenceState) -> tuple[InferenceState, ExitOutput]:
        """Compute exit `state.k`: the backbone stage and head, then every hook in order."""
        k = state.k
        backbone_state, features, logits = self.backbone.forward_stage(k, state.backbone)
        out = ExitOutput(logits, features)
        for hook, memory in zip(self.hooks, state.memories, strict=True):
            out = check_returned(hook.exit_output(k, out, memory), ExitOutput, hook, "exit_output")
        out.scores.setdefault(MAX_SOFTMAX, max_softmax(out.logits))
        for name, score in computed_scores(out.logits).items():
            out.scores.setdefault(name, score)
        return InferenceState(k + 1, backbone_state, state.memories), out

    def select(self, state: InferenceState, index: Tensor) -> InferenceState:
        """Keep only the samples in `index` (rows or a bool mask), memories included."""
        memories = [{key: t[index] for key, t in memory.items()} for memory in state.memories]
        return InferenceState(state.k, self.backbone.select_state(state.backbone, index), memories)

    def concat(self, states: Sequence[InferenceState]) -> InferenceState:
        """The samples of several states waiting for the same exit, as one batch, in order
        (one state is returned as it is: no copy)."""
        if len(states) == 1:
            return states[0]
        k = states[0].k
        if any(state.k != k for state in states):
            raise ValueError(f"cannot join states at exits {[state.k for state in states]}")
        memories = [
            {key: torch.cat([state.memories[h][key] for state in states]) for key in memory}
            for h, memory in enumerate(states[0].memories)
        ]
        return InferenceState(k, concat_states([state.backbone for state in states]), memories)

    def all_exits(self, x: Tensor) -> list[ExitOutput]:
        """Every exit's output for the whole batch (the simulated protocol's inputs)."""
        state = self.start(x)
        outputs = []
        for _ in range(self.num_exits):
            state, out = self.next_exit(state)
            outputs.append(out)
        return outputs


class RecordedExits:
    """A stand-in backbone that replays saved per-exit features and logits.

    Post-hoc methods are fitted and applied on a trained run's saved outputs; replaying
    them through `ExitByExit` runs their hooks exactly as they run on a live backbone.
    The input "x" of `init_state` is the tensor of sample indices to replay.
    """

    def __init__(self, features: Sequence[Tensor], logits: Sequence[Tensor]) -> None:
        self.features = list(features)
        self.logits = list(logits)
        self.num_exits = len(self.logits)

    def init_state(self, x: Tensor) -> State:
        return [x]

    def forward_stage(self, k: int, state: State) -> tuple[State, Tensor, Tensor]:
        (index,) = state
        return state, self.features[k][index], self.logits[k][index]

    @staticmethod
    def select_state(state: State, index: Tensor) -> State:
        return [state[0][index]]


def replay(
    hooks: Sequence[ExitHook],
    features: Sequence[Tensor],
    logits: Sequence[Tensor],
    batch_size: int = 4096,
) -> list[list[ExitOutput]]:
    """The hooks' outputs on saved exits, batch by batch: [batch][exit]."""
    runner = ExitByExit(RecordedExits(features, logits), hooks)
    n = logits[0].shape[0]
    with torch.no_grad():
        return [
            runner.all_exits(torch.arange(start, min(start + batch_size, n)))
            for start in range(0, n, batch_size)
        ]
