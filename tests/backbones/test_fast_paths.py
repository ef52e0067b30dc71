"""Speed options give the eager logits: channels_last (eval and training) and the fast eval
path of benchmarks/backbone_speed.py (fold_batchnorm + channels_last + inference_mode)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from eebench.backbones import MultiExitNet, create_model, fold_batchnorm
from eebench.backbones.common import cat_channels

CL = torch.channels_last
SMALL = ["msdnet_cifar", "msdnet_fmnist", "ranet_cifar", "ranet_fmnist"]
REL = 1e-5  # max |Δlogit| relative to max |logit|


def images(model: MultiExitNet, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(seed))


def is_channels_last(t: torch.Tensor) -> bool:
    """Unambiguously channels_last: the channel stride is 1 (NCHW has H·W there)."""
    return t.is_contiguous(memory_format=CL) and t.stride(1) == 1


def assert_logits_close(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    scale = max(float(z.abs().max()) for z in expected)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=REL, atol=REL * scale)


def randomise_batchnorm(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so that folding does something."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)


def test_cat_channels_equals_cat_and_keeps_channels_last() -> None:
    gen = torch.Generator().manual_seed(0)
    first = torch.randn(2, 4, 5, 5, generator=gen).contiguous(memory_format=CL)
    one = torch.randn(2, 1, 5, 5, generator=gen)  # 1 channel, NCHW-strided: ambiguous
    nchw = torch.randn(2, 3, 5, 5, generator=gen)
    assert not is_channels_last(torch.cat([first, one, nchw], dim=1))  # what torch.cat does
    out = cat_channels([first, one, nchw])
    assert torch.equal(out, torch.cat([first, one, nchw], dim=1)) and is_channels_last(out)
    plain = cat_channels([nchw, one])  # NCHW in, NCHW out: torch.cat unchanged
    assert torch.equal(plain, torch.cat([nchw, one], dim=1)) and plain.is_contiguous()


def test_cat_channels_is_differentiable() -> None:
    first = torch.randn(2, 4, 3, 3).contiguous(memory_format=CL).requires_grad_()
    one = torch.randn(2, 1, 3, 3, requires_grad=True)
    (cat_channels([first, one]) * torch.arange(5.0).view(1, 5, 1, 1)).sum().backward()
    assert torch.equal(one.grad, torch.full_like(one, 4.0))
    assert torch.equal(first.grad, torch.arange(4.0).view(1, 4, 1, 1).expand_as(first))


@pytest.mark.parametrize("name", SMALL)
def test_channels_last_state_and_logits(name: str, models) -> None:
    """Every map passed between exits stays channels_last, and the logits are the NCHW ones."""
    model = copy.deepcopy(models(name)).to(memory_format=CL)
    x = images(model, 2)
    with torch.no_grad():
        expected = models(name)(x)
        state, logits = model.init_state(x.contiguous(memory_format=CL)), []
        for k in range(model.num_exits):
            state, _, out = model.forward_stage(k, state)
            assert all(is_channels_last(t) for t in state), f"{name}: state after exit {k + 1}"
            logits.append(out)
    assert_logits_close(logits, expected)


@pytest.mark.parametrize("name", SMALL)
def test_fast_eval_path_matches_eager(name: str) -> None:
    torch.manual_seed(1)
    model = create_model(name, 10)
    randomise_batchnorm(model)
    model.eval()
    x = images(model, 4)
    fast = fold_batchnorm(model).to(memory_format=CL)
    with torch.inference_mode():
        got = fast(x.contiguous(memory_format=CL))
    with torch.no_grad():
        expected = model(x)
    assert_logits_close(got, expected)


@pytest.mark.parametrize("name", ["msdnet_fmnist", "ranet_fmnist"])
def test_channels_last_training_step_matches(name: str) -> None:
    """Train-mode logits and parameter gradients of one summed-CE step, NCHW vs channels_last.

    In float64: in float32 the two layouts round differently (~1e-6), and on some CPUs that
    flips the sign of one pre-activation lying within 1e-6 of zero (measured: 4.7e-8 vs
    -1.1e-6 in msdnet_fmnist, 2 threads); that one ReLU kink, spread by BatchNorm's batch
    statistics, moves whole gradients by ~2 %. Chaos of float rounding, not a layout bug.
    """
    torch.manual_seed(0)
    nchw = create_model(name, 10).double().train()
    fast = copy.deepcopy(nchw).to(memory_format=CL)
    x, y = images(nchw, 8).double(), torch.arange(8) % 10
    results = []
    for model, inp in ((nchw, x), (fast, x.contiguous(memory_format=CL))):
        logits = model(inp)
        sum(nn.functional.cross_entropy(z, y) for z in logits).backward()
        results.append((logits, [p.grad for p in model.parameters()]))
    (expected, grads), (got, fast_grads) = results
    assert_logits_close([z.detach() for z in got], [z.detach() for z in expected])
    for a, b in zip(fast_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()) + 1e-7)
