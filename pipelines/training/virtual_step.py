"""A functional, differentiable copy of the real optimiser's step: θ′ = step(θ, g).

Why: a train-time method that meta-learns through a look-ahead (a virtual step of the
backbone's own optimiser, then a loss at θ′ differentiated back to whatever made g, e.g.
learned sample weights) needs θ′ as a function of g, with the real optimiser's
groups, lr, momentum and Adam state read but never written. `virtual_step` mirrors
torch.optim.SGD, Adam and AdamW (the engine's families) op for op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn


def _number(value: float | torch.Tensor) -> float:
    return float(value) if isinstance(value, torch.Tensor) else value


def _unsupported(group: dict[str, Any], flags: Sequence[str], name: str) -> None:
    for flag in flags:
        if group.get(flag):
            raise ValueError(f"virtual step: does not mirror {name}({flag}=True)")


def _sgd_step(
    theta: torch.Tensor, grad: torch.Tensor, group: dict[str, Any], state: dict[str, Any]
) -> torch.Tensor:
    """torch.optim.SGD's update, op for op, differentiable in `grad`; the state is read only
    (the first step, without a momentum buffer, takes the buffer = the gradient)."""
    _unsupported(group, ("maximize",), "SGD")
    weight_decay, momentum = group["weight_decay"], group["momentum"]
    d = grad.add(theta, alpha=weight_decay) if weight_decay != 0 else grad
    if momentum != 0:
        buffer = state.get("momentum_buffer")
        undamped = 1 - group["dampening"]
        buffer = d if buffer is None else buffer.mul(momentum).add(d, alpha=undamped)
        d = d.add(buffer, alpha=momentum) if group["nesterov"] else buffer
    return theta.add(d, alpha=-_number(group["lr"]))


def _safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """√v whose gradient is 0, not NaN, where v = 0 (a zero gradient on a fresh state)."""
    positive = v > 0
    root = torch.where(positive, v, torch.ones_like(v)).sqrt()
    return torch.where(positive, root, torch.zeros_like(v))


def _adam_step(
    theta: torch.Tensor,
    grad: torch.Tensor,
    group: dict[str, Any],
    state: dict[str, Any],
    *,
    decoupled_default: bool,
) -> torch.Tensor:
    """torch.optim.Adam/AdamW's update (single-tensor path), differentiable in `grad`;
    decoupled weight decay for AdamW, L2 for Adam (the group's flag when it has one)."""
    _unsupported(group, ("maximize", "amsgrad"), "Adam")
    lr, weight_decay = _number(group["lr"]), group["weight_decay"]
    beta1, beta2 = (_number(b) for b in group["betas"])
    step = _number(state["step"]) + 1 if "step" in state else 1
    if weight_decay != 0 and group.get("decoupled_weight_decay", decoupled_default):
        theta = theta.mul(1 - lr * weight_decay)
    elif weight_decay != 0:
        grad = grad.add(theta, alpha=weight_decay)
    if "exp_avg" in state:
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    else:
        exp_avg = exp_avg_sq = torch.zeros_like(theta)
    exp_avg = exp_avg.lerp(grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq.mul(beta2).addcmul(grad, grad, value=1 - beta2)
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (_safe_sqrt(exp_avg_sq) / bias_correction2_sqrt).add(group["eps"])
    return theta.addcdiv(exp_avg, denom, value=-lr / (1 - beta1**step))


Update = Callable[[torch.Tensor, torch.Tensor, dict[str, Any], dict[str, Any]], torch.Tensor]


def _update_of(optimizer: torch.optim.Optimizer) -> Update:
    """The differentiable update of the optimizer's family (the engine builds SGD or AdamW)."""
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd_step
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        decoupled = isinstance(optimizer, torch.optim.AdamW)
        return partial(_adam_step, decoupled_default=decoupled)
    raise ValueError(f"virtual step: none for {type(optimizer).__name__}; use SGD, Adam or AdamW")


def virtual_step(
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    grads: Sequence[torch.Tensor | None],
) -> list[torch.Tensor]:
    """θ′ = what `optimizer.step()` would make of `params` given `grads`, as tensors that
    depend on the grads' graph. θ itself enters as a constant; the
    optimizer's lr, groups and state are read, never written. A parameter without a
    gradient, or outside the optimizer, stays as it is (the real step skips it)."""
    update = _update_of(optimizer)
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    updated = []
    for p, g in zip(params, grads, strict=True):
        theta = p.detach()
        if g is None or id(p) not in groups:
            updated.append(theta)
        else:
            updated.append(update(theta, g, groups[id(p)], optimizer.state.get(p, {})))
    return updated
