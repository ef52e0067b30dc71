"""Shared fixtures: one thread (the test machine has 2 shared cores) and cached models."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from eebench.backbones import MultiExitNet, create_model


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@functools.cache
def _built(name: str, num_classes: int) -> MultiExitNet:
    torch.manual_seed(0)
    return create_model(name, num_classes).eval()


@pytest.fixture(scope="session")
def models() -> Callable[..., MultiExitNet]:
    """`models(name, num_classes=10)`: a seeded eval-mode model, built once per session.

    Shared between tests: read it, never train or modify it.
    """

    def get(name: str, num_classes: int = 10) -> MultiExitNet:
        return _built(name, num_classes)

    return get
