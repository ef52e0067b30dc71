"""`l2w` (methods/l2w.py): the second-order meta-gradient against finite differences, the
target proportions, a meta step that leaves the real model untouched, and real training
runs (SIGKILL and resume, train_log columns) under the Trainer. Its generic pieces are
tested with their modules: tests/pipelines/training/test_virtual_step.py and
test_budgeted.py.

Expected values are computed here independently: torch.optim's own step, the protocol's
loop definition (`fit_thresholds_reference`), exits worked out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.func import functional_call

from eebench.methods import HyperparameterError
from eebench.methods.l2w import (
    L2W,
    WeightNet,
    exit_confidences,
    exit_losses,
    weighted_loss,
)
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.protocol import exit_counts
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.budgeted import budgeted_exits, budgeted_loss
from eebench.pipelines.training.train import Trainer, train_run
from eebench.pipelines.training.virtual_step import virtual_step
from tests.pipelines.training.test_virtual_step import OPTIMIZERS
from tests.tiny_runs import reference_and_killed, tiny_run, train_subprocess
from tests.tiny_runs import trained_weights as weights

MakeMethod = Callable[..., tuple[Any, Any]]
Batch = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def hparams(**overrides: Any) -> dict[str, Any]:
    """The CIFAR defaults with a small WPN (the tiny tests need no 500 hidden units)."""
    return L2W.resolve_hparams("cifar", {"hidden": 16, **overrides})


# --------------------------------------------------------------------------- meta-gradient


def _set_phi(phi: list[nn.Parameter], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, value in zip(phi, values, strict=True):
            p.copy_(value)


@pytest.mark.parametrize(
    ("input_kind", "normalization"), [("loss", "col"), ("conf", "row"), ("both", "mat")]
)
def test_meta_gradient_matches_central_differences(
    make_method: MakeMethod, batch: Batch, input_kind: str, normalization: str
) -> None:
    """∂L_meta/∂φ through θ′(g(w(φ))) in float64, along a random direction. A first-order
    shortcut (g detached) leaves L_meta without a path to φ and fails here; measured
    relative errors are 1e-11 to 1e-9."""
    method, _ = make_method(L2W, hparams(input=input_kind, normalization=normalization))
    method.double()
    backbone = list(method.backbone.parameters())
    optimizer = torch.optim.SGD(backbone, lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-3)
    x, y = batch(12)
    x = x.double()
    for p in backbone:  # one real step, so that every momentum buffer exists
        p.grad = torch.randn_like(p) * 0.1
    optimizer.step()
    train, meta = (x[:6], y[:6]), (x[6:], y[6:])
    phi = list(method.weight_net.parameters())
    analytic = torch.autograd.grad(method.meta_objective(train, meta, optimizer), phi)

    generator = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in phi]
    expected = sum(float((a * d).sum()) for a, d in zip(analytic, direction, strict=True))
    start, h = [p.detach().clone() for p in phi], 1e-6
    values = []
    for sign in (1.0, -1.0):
        _set_phi(phi, [p + sign * h * d for p, d in zip(start, direction, strict=True)])
        values.append(float(method.meta_objective(train, meta, optimizer).detach()))
    _set_phi(phi, start)
    central = (values[0] - values[1]) / (2 * h)
    assert abs(expected) > 1e-6, "the meta-gradient vanished: is the path through g cut?"
    assert abs(central - expected) / abs(expected) < 1e-4, (central, expected)


def double_backward_meta_objective(
    method: L2W,
    train: tuple[torch.Tensor, torch.Tensor],
    meta: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
) -> torch.Tensor:
    """L_meta(φ) the direct way (the method's code_version "" path): the inner gradient
    with create_graph on detached copies of θ, θ′ from it, and autograd's double backward
    from L_meta(θ′) to φ."""
    backbone = method.backbone
    backbone.train()
    named = list(backbone.named_parameters())
    buffers = {name: b.clone() for name, b in backbone.named_buffers()}
    theta = [p.detach().requires_grad_() for _, p in named]
    values = {name: t for (name, _), t in zip(named, theta, strict=True)}
    logits = functional_call(backbone, {**values, **buffers}, train[0])
    ce = exit_losses(logits, train[1])
    inner = weighted_loss(method.sample_weights(ce, logits), ce)
    grads = torch.autograd.grad(inner, theta, create_graph=True, allow_unused=True)
    updated = virtual_step(optimizer, [p for _, p in named], grads)
    values = {name: t for (name, _), t in zip(named, updated, strict=True)}
    meta_logits = functional_call(backbone, {**values, **buffers}, meta[0])
    counts = exit_counts(len(meta[1]), method.proportions)
    exits = budgeted_exits(exit_confidences(meta_logits).detach(), counts)
    return budgeted_loss(exit_losses(meta_logits, meta[1]), exits)


@pytest.mark.parametrize(
    ("name", "warm_steps", "input_kind", "soft", "shared"),
    [
        ("sgd", 1, "loss", False, True),
        ("sgd_nesterov", 0, "both", True, False),
        ("sgd_dampening", 2, "conf", False, True),
        ("sgd_no_momentum", 0, "loss", True, True),
        ("adamw", 0, "loss", False, False),
        ("adamw", 2, "both", False, True),
        ("adam_l2", 1, "conf", True, True),
    ],
)
def test_meta_gradient_equals_the_double_backward(
    make_method: MakeMethod,
    batch: Batch,
    name: str,
    warm_steps: int,
    input_kind: str,
    soft: bool,
    shared: bool,
) -> None:
    """The first-order gradient + forward-mode product gives the double backward's value
    and φ-gradient to round-off in float64, for every optimizer the virtual step mirrors
    (two groups, one without weight decay; Adam's update is not linear in g), on the
    train half's own forward or on the real model's (`shared`, as training_step does)."""
    method, _ = make_method(L2W, hparams(input=input_kind, normalization="mat"))
    method.double()
    decay = [p for p in method.backbone.parameters() if p.dim() > 1]
    no_decay = [p for p in method.backbone.parameters() if p.dim() <= 1]
    optimizer = OPTIMIZERS[name]([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}])
    for _ in range(warm_steps):
        for p in method.backbone.parameters():
            p.grad = torch.randn_like(p) * 0.1
        optimizer.step()
    x, y = batch(12, soft=soft)
    x, y = x.double(), (y.double() if soft else y)
    train, meta = (x[:6], y[:6]), (x[6:], y[6:])
    phi = list(method.weight_net.parameters())
    expected_loss = double_backward_meta_objective(method, train, meta, optimizer)
    expected = torch.autograd.grad(expected_loss, phi)

    method.backbone.train()
    logits = method.backbone(train[0]) if shared else None
    loss = method.meta_objective(train, meta, optimizer, logits=logits)
    got = torch.autograd.grad(loss, phi)

    torch.testing.assert_close(loss.detach(), expected_loss.detach(), rtol=1e-12, atol=0)
    assert any(float(e.abs().max()) > 1e-6 for e in expected), "no meta-gradient to compare"
    # Soft-target CE is taken in float32 (per_sample_cross_entropy): float32 round-off.
    rtol = 1e-5 if soft else 1e-9
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=rtol, atol=rtol * 1e-3 * float(e.abs().max()))


def test_target_proportions_are_the_protocols_at_the_target_index(make_method: MakeMethod) -> None:
    method, _ = make_method(L2W, hparams(target_p_index=7))
    np.testing.assert_array_equal(method.proportions, protocol.exit_proportions(0.35, 3))
    method, _ = make_method(L2W, hparams())
    np.testing.assert_array_equal(method.proportions, protocol.exit_proportions(0.75, 3))


# --------------------------------------------------------------------------- steps


@pytest.mark.parametrize("shared", [False, True], ids=["own_forward", "shared_forward"])
def test_meta_step_leaves_the_real_model_bit_identical(
    make_method: MakeMethod, batch: Batch, shared: bool
) -> None:
    """On its own forward (cloned buffers) or on the real step's (whose BN statistics have
    moved once, before the snapshot), the meta step writes nothing of the backbone."""
    method, engine = make_method(L2W, hparams())
    x, y = batch(8)
    method.training_step(x, y, 0, engine)  # non-trivial BN statistics and weights
    logits = method.train_forward(x[:4], engine) if shared else None
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    phi = [p.detach().clone() for p in method.weight_net.parameters()]
    steps = engine.steps["weight_net"]

    loss = method.meta_step((x[:4], y[:4]), (x[4:], y[4:]), engine, logits)

    assert math.isfinite(float(loss))
    after = method.backbone.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():  # parameters, running stats and num_batches_tracked
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in method.backbone.parameters())
    assert engine.steps["weight_net"] == steps + 1
    moved = [
        not torch.equal(p, q) for p, q in zip(method.weight_net.parameters(), phi, strict=True)
    ]
    assert any(moved), "φ did not move"


def test_backbone_step_weights_ce_with_the_current_wpn_as_constants(
    make_method: MakeMethod, batch: Batch
) -> None:
    method, engine = make_method(L2W, hparams())
    x, y = batch(6)
    method.backbone.train()
    logits = method.backbone(x)
    ce = exit_losses(logits, y)
    w = method.sample_weights(ce, logits).detach()
    expected = weighted_loss(w, ce)
    params = list(method.backbone.parameters())
    expected_grads = torch.autograd.grad(expected, params)
    seen: dict[str, Any] = {}

    def record(handle: Any) -> None:
        seen["grads"] = [p.grad.clone() for p in params]
        seen["phi_grads"] = [p.grad for p in method.weight_net.parameters()]

    engine.on_backward = record
    step = method.theta_step(method.train_forward(x, engine), y, engine)
    torch.testing.assert_close(step.loss, expected.detach())
    torch.testing.assert_close(step.w, w)
    for got, want in zip(seen["grads"], expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    assert all(g is None for g in seen["phi_grads"]), "the backbone step reached φ"


def test_sharing_the_train_forward_changes_no_bit(make_method: MakeMethod, batch: Batch) -> None:
    """training_step runs each train half forward once, for the meta step's inner gradient
    and the real step; meta steps on their own forward (cloned buffers) and real steps on a
    fresh forward give the same backbone, BN statistics and φ, bit for bit."""
    torch.manual_seed(3)
    shared, shared_engine = make_method(L2W, hparams())
    torch.manual_seed(3)
    separate, separate_engine = make_method(L2W, hparams())
    for step in range(3):
        x, y = batch(8)
        shared.training_step(x, y, step, shared_engine)
        halves = (x[:4], y[:4]), (x[4:], y[4:])
        for train, meta in (halves, halves[::-1]):
            separate.meta_step(train, meta, separate_engine)
            logits = separate.train_forward(train[0], separate_engine)
            separate.theta_step(logits, train[1], separate_engine)
    expected, got = separate.state_dict(), shared.state_dict()
    assert any(key.startswith("weight_net.") for key in got)
    for key, value in got.items():
        assert torch.equal(value, expected[key]), key


@pytest.mark.parametrize(("normalization", "dim"), [("col", 1), ("row", 0), ("mat", None)])
def test_weights_average_one_along_the_normalised_dimension(
    normalization: str, dim: int | None
) -> None:
    epsilon = 0.8
    net = WeightNet(
        4, input_kind="loss", hidden=8, num_layers=2, epsilon=epsilon, normalization=normalization
    )
    w = net(torch.rand(5, 4) * 3)
    mean = w.mean() if dim is None else w.mean(dim=dim)
    torch.testing.assert_close(mean, torch.ones_like(mean))
    assert ((w > 1 - 2 * epsilon) & (w < 1 + 2 * epsilon)).all()


def test_meta_steps_follow_the_interval_and_are_counted(
    make_method: MakeMethod, batch: Batch
) -> None:
    method, engine = make_method(L2W, hparams(meta_interval=3))
    x, y = batch(8)
    steps = [0, 1, 2, 3, 9, 10]  # 10 steps per epoch: step 10 is the next epoch's first
    counted = [method.training_step(x, y, step, engine).counts["meta_steps"] for step in steps]
    assert counted == [2.0, 0.0, 0.0, 2.0, 2.0, 2.0]
    assert engine.steps["weight_net"] == 8 and engine.steps["backbone"] == 12
    out = method.training_step(x, y, 6, engine)
    assert set(out.metrics) == {
        *(f"{name}{k}" for name in ("w_exit", "ce_exit") for k in (1, 2, 3)),
        "w_std",
        "w_min",
    }
    assert out.counts["meta_loss_sum"] > 0


@pytest.mark.parametrize(
    "bad",
    [
        {"normalization": "rows"},
        {"input": "logits"},
        {"meta_interval": 0},
        {"target_p_index": 40},
        {"epsilon": -0.1},
        {"meta_optimizer": "sgd"},
    ],
)
def test_bad_hyperparameters_are_named(make_method: MakeMethod, bad: dict[str, Any]) -> None:
    with pytest.raises(HyperparameterError, match=f"l2w: {next(iter(bad))}"):
        make_method(L2W, hparams(**bad))


def test_imagenet_defaults_are_the_readmes() -> None:
    resolved = L2W.resolve_hparams("imagenet")
    assert (resolved["epsilon"], resolved["normalization"], resolved["meta_interval"]) == (
        0.3,
        "mat",
        100,
    )
    cifar = L2W.resolve_hparams("cifar")
    assert (cifar["epsilon"], cifar["normalization"], cifar["meta_interval"]) == (0.8, "col", 1)
    assert (cifar["meta_lr"], cifar["meta_weight_decay"], cifar["hidden"]) == (1e-4, 1e-4, 500)
    assert cifar["target_p_index"] == 15


# --------------------------------------------------------------------------- real training


TRAIN_SUBSET, BATCH = 48, 16
STEPS_PER_EPOCH = TRAIN_SUBSET // BATCH  # drop_last


def make_run(**overrides: Any) -> dict[str, Any]:
    """A tiny synthetic l2w run."""
    settings = {"train_subset": TRAIN_SUBSET, "checkpoint_every_steps": 2, **overrides}
    return tiny_run(
        recipe={"batch_size": BATCH, **settings.pop("recipe", {})},
        method="l2w",
        hparams=L2W.resolve_hparams("synthetic", settings.pop("hparams", {})),
        validate_each_epoch=False,
        **settings,
    )


def test_sigkill_mid_epoch_then_resume_gives_identical_run(tmp_path: Path) -> None:
    """Killed after its first mid-epoch checkpoint, the run resumes to the same backbone,
    WPN and train_log (Adam's state travels in the engine's slot)."""
    torch.set_num_threads(1)
    run = make_run()
    reference, killed, left = reference_and_killed(run, tmp_path)
    state = ckpt.load_torch(left[-1], ("position", "optimizers"))
    assert state["position"]["batch"] > 0, "the first checkpoint is taken in mid-epoch"
    assert state["optimizers"]["weight_net"]["state"], "Adam's state is in the checkpoint"
    proc = train_subprocess(tmp_path / "killed.yaml", killed)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    expected, got = weights(reference), weights(killed)
    assert expected.keys() == got.keys()
    assert any(key.startswith("weight_net.") for key in expected)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    pd.testing.assert_frame_equal(
        pd.read_csv(reference / "train_log.csv").drop(columns="seconds"),
        pd.read_csv(killed / "train_log.csv").drop(columns="seconds"),
    )


RECIPE_CASES = {
    "sgd": {},
    "nesterov_smoothing": {"nesterov": True, "label_smoothing": 0.1},
    "adamw_warmup": {
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "decay_matrices_only": True,
        "warmup_epochs": 0.5,
    },
}


@pytest.mark.parametrize("case", RECIPE_CASES)
def test_one_epoch_trains_and_logs_the_metrics(tmp_path: Path, case: str) -> None:
    torch.set_num_threads(1)
    run = make_run(recipe={"epochs": 1, **RECIPE_CASES[case]}, checkpoint_every_steps=1000)
    train_run(run, tmp_path / "run", tmp_path / "splits")
    log = pd.read_csv(tmp_path / "run" / "train_log.csv")
    exits = range(1, 5)  # msdnet_fmnist has 4 exits
    columns = {f"w_exit{k}" for k in exits} | {f"ce_exit{k}" for k in exits}
    assert columns | {"w_std", "w_min", "meta_steps", "meta_loss_sum", "train_loss"} <= set(
        log.columns
    )
    row = log.iloc[-1]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["meta_loss_sum"])
    assert row["meta_steps"] == 2 * STEPS_PER_EPOCH
    assert any(key.startswith("weight_net.") for key in weights(tmp_path / "run"))


def test_wpn_optimizer_is_adam_in_an_engine_slot_on_a_cosine(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    lr, wd = 3e-4, 2e-4
    built = Trainer(
        make_run(hparams={"meta_lr": lr, "meta_weight_decay": wd}), tmp_path / "run", tmp_path
    )
    slot = built.engine.slots["weight_net"]
    assert type(slot.optimizer) is torch.optim.Adam
    params = [p for group in slot.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in params} == {id(p) for p in built.method.weight_net.parameters()}
    assert all(group["weight_decay"] == wd for group in slot.optimizer.param_groups)
    total = 2 * STEPS_PER_EPOCH  # epochs × steps; cosine from lr to 0, no warm-up
    for step in (0, total // 2, total):
        expected = 0.5 * lr * (1 + math.cos(math.pi * step / total))
        assert slot.set_lr(step) == pytest.approx(expected)
        assert slot.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    recipe_family = Trainer(
        make_run(hparams={"meta_optimizer": "recipe"}), tmp_path / "other", tmp_path
    )
    assert type(recipe_family.engine.slots["weight_net"].optimizer) is torch.optim.SGD
