"""Test doubles for method tests: tiny multi-exit networks and a plain-SGD StepEngine."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class TinyConvExits(nn.Module):
    """Three exits on 1×8×8 inputs, with BatchNorm so that eval/train mode matters."""

    def __init__(self, num_classes: int = 3) -> None:
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

    def forward(self, x: torch.Tensor, return_features: bool = False) -> list[torch.Tensor]:
        logits = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            logits.append(head(x))
        return logits


class LinearThenMLPExits(nn.Module):
    """Two exits: a linear classifier on the raw input, then a 2-layer MLP (solves XOR)."""

    def __init__(self, num_classes: int = 2, width: int = 32) -> None:
        super().__init__()
        self.head1 = nn.Linear(64, num_classes)
        self.stage2 = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.head2 = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> list[torch.Tensor]:
        flat = x.flatten(1)
        return [self.head1(flat), self.head2(self.stage2(flat))]


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
    ) -> Handle:
        return Handle(name, torch.optim.SGD(list(params), lr=lr, weight_decay=weight_decay))

    def optimize(self, loss: torch.Tensor, handle: Handle | None = None) -> None:
        handle = handle or self.backbone_optimizer()
        self.method.zero_grad(set_to_none=True)
        loss.backward()
        if self.on_backward is not None:
            self.on_backward(handle)
        handle.optimizer.step()
        self.steps[handle.name] += 1


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def engine_cls() -> type[FakeEngine]:
    return FakeEngine


@pytest.fixture
def tiny_conv_cls() -> type[TinyConvExits]:
    return TinyConvExits


@pytest.fixture
def linear_mlp_cls() -> type[LinearThenMLPExits]:
    return LinearThenMLPExits
