"""`pipelines/training/virtual_step.py`: the functional step equals the real optimiser's
step for every family and setting the engine builds, writes no optimiser state, and stays
differentiable in the gradient where √v is 0."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from eebench.pipelines.training.virtual_step import virtual_step

#: Optimisers the step must mirror (also the meta-gradient tests' in tests/methods/test_l2w.py).
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]]], torch.optim.Optimizer]] = {
    "sgd": lambda g: torch.optim.SGD(g, lr=0.3, momentum=0.9, weight_decay=1e-4),
    "sgd_nesterov": lambda g: torch.optim.SGD(
        g, lr=0.3, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    "sgd_dampening": lambda g: torch.optim.SGD(
        g, lr=0.3, momentum=0.8, dampening=0.3, weight_decay=1e-4
    ),
    "sgd_no_momentum": lambda g: torch.optim.SGD(g, lr=0.3, weight_decay=1e-4),
    "adamw": lambda g: torch.optim.AdamW(g, lr=1e-2, weight_decay=0.05, eps=1e-8),
    "adam_l2": lambda g: torch.optim.Adam(g, lr=1e-2, weight_decay=1e-3),
}


def _state_copy(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return copy.deepcopy(optimizer.state_dict())


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    for key in a["state"]:
        for name, value in a["state"][key].items():
            other = b["state"][key][name]
            if not (torch.equal(value, other) if torch.is_tensor(value) else value == other):
                return False
    return a["state"].keys() == b["state"].keys() and a["param_groups"] == b["param_groups"]


@pytest.mark.parametrize("warm_steps", [0, 2], ids=["first_step", "with_state"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_virtual_step_equals_the_real_step(name: str, warm_steps: int) -> None:
    """Two groups (the second without weight decay, as `decay_matrices_only`), a parameter
    without a gradient, an lr changed by the schedule since the last step."""
    params = [nn.Parameter(torch.randn(*shape)) for shape in ((4, 3), (2, 3, 3, 3), (4,), (5,))]
    groups = [
        {"params": params[:2]},
        {"params": params[2:], "weight_decay": 0.0},
    ]
    optimizer = OPTIMIZERS[name](groups)
    for _ in range(warm_steps):
        for p in params[:3]:
            p.grad = torch.randn_like(p)
        optimizer.step()
    for group in optimizer.param_groups:
        group["lr"] *= 0.7  # what OptimizerSlot.set_lr does before the step
    grads: list[torch.Tensor | None] = [torch.randn_like(p) for p in params[:3]] + [None]
    state = _state_copy(optimizer)

    virtual = virtual_step(optimizer, params, grads)
    assert _same_state(state, optimizer.state_dict()), "the virtual step wrote the state"
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()
    for got, p in zip(virtual, params, strict=True):
        torch.testing.assert_close(got, p.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["adamw", "sgd_nesterov"])
def test_virtual_step_is_differentiable_in_the_gradient_even_where_it_is_zero(
    name: str,
) -> None:
    """A fresh Adam state and a zero gradient entry: √v at v = 0 must not give NaN."""
    param = nn.Parameter(torch.randn(6))
    optimizer = OPTIMIZERS[name]([{"params": [param]}])
    grad = torch.tensor([0.0, 1.0, -2.0, 0.0, 0.5, 3.0], requires_grad=True)
    (updated,) = virtual_step(optimizer, [param], [grad])
    (d_grad,) = torch.autograd.grad(updated.sum(), grad)
    assert torch.isfinite(d_grad).all()
    assert (d_grad[[1, 2, 4, 5]] != 0).all()
