"""Test doubles for method tests: tiny multi-exit networks and their batches, a plain-SGD
StepEngine, and a builder of any train method on them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eebench.methods import TrainContext, TrainMethod
from eebench.methods.inference import ExitByExit

torch.set_num_threads(1)

#: Classes of the tiny runs: TinyConvExits, make_batch and build_method default to it.
NUM_CLASSES = 3


class StagedExits(nn.Module):
    """The stage interface of the real backbones (init_state, forward_stage, select_state,
    exit_classifiers) over `stages` and `heads` (pooling …, then a final Linear)."""

    stages: nn.ModuleList
    heads: nn.ModuleList

    @property
    def num_exits(self) -> int:
        return len(self.heads)

    def init_state(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]

    def forward_stage(
        self, k: int, state: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        x = self.stages[k](state[0])
        features = self.heads[k][:-1](x)
        return [x], features, self.heads[k][-1](features)

    @staticmethod
    def select_state(state: list[torch.Tensor], index: torch.Tensor) -> list[torch.Tensor]:
        return [t[index] for t in state]

    def exit_classifiers(self) -> list[nn.Linear]:
        return [head[-1] for head in self.heads]

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-exit logits, and (like the real backbones) the pre-classifier features."""
        state, logits, features = self.init_state(x), [], []
        for k in range(self.num_exits):
            state, feats, out = self.forward_stage(k, state)
            logits.append(out)
            features.append(feats)
        return (logits, features) if return_features else logits


class TinyConvExits(StagedExits):
    """Three exits on 1×8×8 inputs, with BatchNorm so that eval/train mode matters."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
                nn.Sequential(
                    nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU()
                ),
                nn.Sequential(
                    nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()
                ),
            ]
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))
            for c in (4, 6, 8)
        )


class LinearThenMLPExits(StagedExits):
    """Two exits: a linear classifier on the raw input, then a 2-layer MLP (solves XOR)."""

    def __init__(self, num_classes: int = 2, width: int = 32) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                nn.Flatten(1),
                nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()),
            ]
        )
        self.heads = nn.ModuleList(
            [
                nn.Sequential(nn.Identity(), nn.Linear(64, num_classes)),
                nn.Sequential(nn.Identity(), nn.Linear(width, num_classes)),
            ]
        )

    def forward_stage(
        self, k: int, state: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Exit 2's MLP reads the flat input (the state), not exit 1's output."""
        flat = state[0].flatten(1)
        features = self.stages[k](flat)
        return [flat], features, self.heads[k][-1](features)


def exit_scores(method: TrainMethod, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """K×B scores by name of the method's exit-by-exit inference (eval mode, no grad)."""
    method.eval()
    with torch.no_grad():
        exits = ExitByExit(method.backbone, [method]).all_exits(x)
    return {name: torch.stack([out.scores[name] for out in exits]) for name in exits[0].scores}


@dataclass
class Handle:
    name: str
    optimizer: torch.optim.Optimizer


class FakeEngine:
    """StepEngine protocol with plain SGD, no AMP; counts optimizer steps per handle."""

    def __init__(self, method: nn.Module, lr: float = 0.1) -> None:
        self.device = torch.device("cpu")
        self.method = method
        params = method.backbone_parameters()
        self._backbone = Handle("backbone", torch.optim.SGD(params, lr=lr)) if params else None
        self.steps: Counter[str] = Counter()
        self.on_backward: Callable[[Handle], None] | None = None
        self.schedules: dict[str, Callable[[int], float] | None] = {}  # per add_optimizer

    def autocast(self) -> AbstractContextManager[None]:
        return nullcontext()

    def backbone_optimizer(self) -> Handle:
        if self._backbone is None:
            raise RuntimeError("no backbone optimizer: the method trains no backbone parameter")
        return self._backbone

    def add_optimizer(
        self,
        name: str,
        params: Iterator[nn.Parameter] | list[nn.Parameter],
        *,
        lr: float,
        min_lr: float,
        weight_decay: float,
        warmup_epochs: float = 0.0,
        family: str | None = None,
        schedule: Callable[[int], float] | None = None,
    ) -> Handle:
        self.schedules[name] = schedule
        return Handle(name, torch.optim.SGD(list(params), lr=lr, weight_decay=weight_decay))

    def optimize(self, loss: torch.Tensor, handle: Handle | None = None) -> None:
        handle = handle or self.backbone_optimizer()
        self.method.zero_grad(set_to_none=True)
        loss.backward()
        if self.on_backward is not None:
            self.on_backward(handle)
        handle.optimizer.step()
        self.steps[handle.name] += 1


def make_batch(
    n: int = 8, soft: bool = False, num_classes: int = NUM_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 1×8×8 inputs with hard labels (n,), or Mixup-like soft targets (n, classes)."""
    x = torch.randn(n, 1, 8, 8)
    y = torch.randint(0, num_classes, (n,))
    if not soft:
        return x, y
    one_hot = F.one_hot(y, num_classes).float()
    return x, 0.7 * one_hot + 0.3 * one_hot.roll(1, dims=0)


def build_method(
    cls: type[TrainMethod],
    hparams: dict[str, Any],
    backbone: nn.Module | None = None,
    mflops: tuple[float, ...] = (1.0, 2.0, 4.0),
    engine_lr: float = 0.1,
) -> tuple[TrainMethod, FakeEngine]:
    """A configured `cls` on `backbone` (default: TinyConvExits) and its engine double.

    The context is a tiny CIFAR-family run with these cumulative MFLOPs per exit.
    """
    ctx = TrainContext(
        num_classes=NUM_CLASSES,
        exit_mflops=np.asarray(mflops),
        family="cifar",
        steps_per_epoch=10,
        epochs=1,
    )
    method = cls(backbone if backbone is not None else TinyConvExits(), hparams, ctx)
    engine = FakeEngine(method, lr=engine_lr)
    method.configure(engine)
    return method, engine


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def batch() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    return make_batch


@pytest.fixture
def make_method() -> Callable[..., tuple[TrainMethod, FakeEngine]]:
    return build_method


@pytest.fixture
def scores_of() -> Callable[[TrainMethod, torch.Tensor], dict[str, torch.Tensor]]:
    return exit_scores


@pytest.fixture
def linear_mlp_cls() -> type[LinearThenMLPExits]:
    return LinearThenMLPExits
