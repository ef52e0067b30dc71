"""Tests of `joint_bilevel`: the exit distribution, the two steps, the schedule, variants, e2e."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eebench.methods import TRAIN_METHODS, HyperparameterError
from eebench.methods.base import per_sample_cross_entropy
from eebench.methods.joint_bilevel import (
    EPS,
    ExitGater,
    JointBilevel,
    exit_distribution,
    gater_features,
    phi_loss,
    theta_loss,
)

NUM_CLASSES = 3
Build = Callable[..., tuple[JointBilevel, Any]]
ScoresOf = Callable[[Any, torch.Tensor], dict[str, torch.Tensor]]
Batch = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture
def build(make_method: Callable[..., tuple[Any, Any]]) -> Build:
    """A configured method on a given (default: tiny conv) backbone, and its engine double;
    keyword arguments other than backbone, mflops and engine_lr override hyperparameters."""

    def make(
        backbone: nn.Module | None = None,
        mflops: tuple[float, ...] = (1.0, 2.0, 4.0),
        engine_lr: float = 0.1,
        **overrides: Any,
    ) -> tuple[JointBilevel, Any]:
        hparams = JointBilevel.resolve_hparams("cifar", {"hidden": 16, **overrides})
        return make_method(JointBilevel, hparams, backbone, mflops, engine_lr)

    return make


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- exit distribution


def test_exit_distribution_rows_sum_to_one() -> None:
    P = torch.rand(50, 6, dtype=torch.float64)
    for T in (0.25, 0.5, 1.0, 2.0):
        A = exit_distribution(P, T)
        assert A.shape == (50, 7)
        torch.testing.assert_close(A.sum(dim=1), torch.ones(50, dtype=torch.float64))


def eq5_with_eps(P: list[float], T: float) -> list[float]:
    """Eq. 5 with eps in both factors, raised to 1/T and normalised (Eq. 9), by hand."""
    unnorm = []
    reach = 1.0
    for p in P:
        unnorm.append(((p + EPS) * reach) ** (1 / T))
        reach *= 1 - p + EPS
    unnorm.append(reach ** (1 / T))
    total = sum(unnorm)
    return [u / total for u in unnorm]


@pytest.mark.parametrize(
    "P",
    [[0.5, 0.5], [0.2, 0.7], [1e-7, 0.3], [1 - 1e-7, 0.4], [0.3, 1 - 1e-7], [0.0, 1.0]],
)
@pytest.mark.parametrize("T", [0.5, 1.0])
def test_exit_distribution_matches_closed_form(P: list[float], T: float) -> None:
    A = exit_distribution(torch.tensor([P], dtype=torch.float64), T)[0]
    torch.testing.assert_close(A, torch.tensor(eq5_with_eps(P, T), dtype=torch.float64))


def test_exit_distribution_hand_values() -> None:
    # P=(0.5, 0.5), T=1: Pr = (0.5, 0.25, 0.25) up to eps; T=0.5 squares then renormalises.
    A1 = exit_distribution(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 1.0)[0]
    torch.testing.assert_close(
        A1, torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64), atol=2e-5, rtol=0
    )
    A05 = exit_distribution(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 0.5)[0]
    expected = torch.tensor([0.25, 0.0625, 0.0625], dtype=torch.float64) / 0.375
    torch.testing.assert_close(A05, expected, atol=5e-5, rtol=0)
    # P_1 = 1 exactly: everything at exit 1 except eps-sized leaks.
    A = exit_distribution(torch.tensor([[1.0, 0.0]], dtype=torch.float64), 1.0)[0]
    assert A[0] > 1 - 2e-5 and A[1] < 1e-9 and abs(A[2] - EPS) < 1e-9


def test_exit_distribution_temperature_one_is_eq5() -> None:
    P = torch.tensor([[0.1, 0.6, 0.3], [0.9, 0.2, 0.5]], dtype=torch.float64)
    pr = torch.stack(
        [
            P[:, 0],
            P[:, 1] * (1 - P[:, 0]),
            P[:, 2] * (1 - P[:, 0]) * (1 - P[:, 1]),
            (1 - P[:, 0]) * (1 - P[:, 1]) * (1 - P[:, 2]),
        ],
        dim=1,
    )
    torch.testing.assert_close(exit_distribution(P, 1.0), pr, atol=1e-4, rtol=0)


def test_exit_distribution_finite_at_zero_and_one() -> None:
    P = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], requires_grad=True)
    A = exit_distribution(P, 0.5)
    weights = torch.arange(1.0, 5.0)  # a loss that depends on every entry of A
    (A * weights).sum().backward()
    assert torch.isfinite(A).all()
    assert torch.isfinite(P.grad).all()
    assert P.grad.abs().sum() > 0


def test_losses_by_hand() -> None:
    ce = torch.tensor([[1.0, 0.5], [2.0, 0.0]])
    A = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    costs = torch.tensor([0.5, 1.0])
    # sample 1: 1.25*(1+1) + 1.75*(0.5+2); sample 2: 2*(2+1) + 1*(0+2)
    assert theta_loss(ce, A, costs, 2.0).item() == pytest.approx((6.875 + 8.0) / 2)
    # sample 1: 0.25*2 + 0.75*2.5; sample 2: 1*3 + 0
    assert phi_loss(ce, A, costs, 2.0).item() == pytest.approx((2.375 + 3.0) / 2)


# --------------------------------------------------------------------------- gater features


def test_gater_feature_values() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [math.log(6.0), math.log(3.0), 0.0, -50.0]])
    s = gater_features(logits, ("confidence", "margin", "entropy"))
    p = torch.tensor([0.6, 0.3, 0.1])
    entropy = -(p * p.log()).sum()
    torch.testing.assert_close(s[0], torch.tensor([0.25, 0.0, math.log(4.0)]))
    torch.testing.assert_close(s[1], torch.stack([p[0], p[0] - p[1], entropy]), atol=1e-5, rtol=0)


def test_gater_features_canonical_order() -> None:
    logits = torch.randn(5, 4)
    torch.testing.assert_close(
        gater_features(logits, ("entropy", "confidence")),
        gater_features(logits, ("confidence", "entropy")),
    )


@pytest.mark.parametrize(
    ("features", "width"),
    [(["margin"], 1), (["entropy", "confidence"], 2), (["confidence", "margin", "entropy"], 3)],
)
def test_feature_subsets_set_input_width(build: Build, features: list[str], width: int) -> None:
    method, _ = build(features=features)
    assert [mlp[0].in_features for mlp in method.gater.mlps] == [width, width]
    P = method.gater(method.backbone(torch.randn(4, 1, 8, 8)))
    assert P.shape == (4, 2) and ((P > 0) & (P < 1)).all()


@pytest.mark.parametrize("features", [["confidence", "variance"], [], ["margin", "margin"]])
def test_bad_feature_names_are_rejected(build: Build, features: list[str]) -> None:
    with pytest.raises(HyperparameterError, match="confidence, margin, entropy"):
        build(features=features)


def test_gater_architecture() -> None:
    gater = ExitGater(num_exits=4, features=("confidence",), hidden=7, num_layers=3)
    assert len(gater.mlps) == 3
    mlp = gater.mlps[0]
    assert [type(m).__name__ for m in mlp] == 3 * ["Linear", "GELU"] + ["Linear", "Sigmoid"]
    assert mlp[-2].out_features == 1


# --------------------------------------------------------------------------- hyperparameters


def test_registered() -> None:
    assert TRAIN_METHODS.get("joint_bilevel") is JointBilevel
    assert JointBilevel.score_names == ("score",)


def test_family_resolution() -> None:
    paper = JointBilevel.resolve_hparams("cifar")
    assert paper["features"] == ["confidence", "entropy"] and paper["phi_interval"] == 10
    assert (paper["hidden"], paper["lam"], paper["temperature"]) == (500, 2.0, 0.5)
    assert (paper["phi_lr"], paper["phi_min_lr"]) == (1e-3, 1e-5)
    assert JointBilevel.resolve_hparams("fmnist") == paper
    imagenet = JointBilevel.resolve_hparams("imagenet")
    assert imagenet["features"] == ["confidence", "margin", "entropy"]
    assert imagenet["phi_interval"] == 100


def test_unknown_and_mistyped_hparams() -> None:
    with pytest.raises(HyperparameterError, match="unknown hyperparameter 'lambda'"):
        JointBilevel.resolve_hparams("cifar", {"lambda": 1.0})
    with pytest.raises(HyperparameterError, match="'phi_interval' must be int"):
        JointBilevel.resolve_hparams("cifar", {"phi_interval": 2.5})


def test_variants() -> None:
    subsets = "confidence margin entropy confidence+margin confidence+entropy margin+entropy"
    subsets = {*subsets.split(), "confidence+margin+entropy"}
    others = {"frozen", "released_code", "lam=0.1", "lam=0.5", "lam=1", "lam=4", "T=0.25", "T=1"}
    assert set(JointBilevel.variants) == subsets | others
    for name in subsets:
        assert "+".join(JointBilevel.variant(name)["hparams"]["features"]) == name
    assert JointBilevel.variant("frozen")["init_from"] == "standard"
    released = JointBilevel.variant("released_code")
    assert released["recipe"] == "released_code" and released["activation"] == "gelu"
    for name in JointBilevel.variants:  # every variant's overrides are valid hyperparameters
        for family in ("cifar", "imagenet"):
            JointBilevel.resolve_hparams(family, JointBilevel.variant(name).get("hparams"))
    hp = JointBilevel.resolve_hparams("imagenet", released["hparams"])
    assert (hp["features"], hp["hidden"], hp["lam"], hp["phi_interval"]) == (
        ["confidence", "margin"],
        100,
        0.1,
        10,
    )


# --------------------------------------------------------------------------- the two steps


def test_theta_step_moves_theta_not_phi(build: Build, batch: Batch) -> None:
    method, engine = build()
    theta, phi = snapshot(method.backbone), snapshot(method.gater)
    method.theta_step(*batch(), engine)
    assert not same(theta, snapshot(method.backbone))
    assert same(phi, snapshot(method.gater))
    assert engine.steps == {"backbone": 1}


def test_phi_step_moves_phi_not_theta(build: Build, batch: Batch) -> None:
    method, engine = build()
    seen: list[torch.Tensor] = []
    method.backbone.register_forward_hook(lambda _m, _i, out: seen.extend(out))
    grads: dict[str, Any] = {}
    engine.on_backward = lambda _h: grads.update(
        {n: p.grad for n, p in method.backbone.named_parameters()}
    )
    theta, phi = snapshot(method.backbone), snapshot(method.gater)  # incl. BN running stats
    method.phi_step(*batch(), engine)
    assert same(theta, snapshot(method.backbone))
    assert not same(phi, snapshot(method.gater))
    assert all(not z.requires_grad and z.grad_fn is None for z in seen)  # logits are constants
    assert all(g is None for g in grads.values())
    assert method.backbone.training  # train mode restored for the next θ-step
    assert engine.steps == {"gater": 1}


def test_theta_gradient_flows_through_A(build: Build, batch: Batch) -> None:
    method, engine = build()
    x, y = batch()
    backbone, gater = copy.deepcopy(method.backbone), copy.deepcopy(method.gater)

    def reference_grads(detach_A: bool) -> list[torch.Tensor]:
        backbone.zero_grad()
        logits = backbone(x)
        ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits], dim=1)
        A = exit_distribution(gater(logits), method.hp["temperature"])
        A = A.detach() if detach_A else A
        theta_loss(ce, A, method.costs, method.hp["lam"]).backward()
        return [p.grad.clone() for p in backbone.parameters()]

    got: list[torch.Tensor] = []
    engine.on_backward = lambda _h: got.extend(p.grad.clone() for p in method.backbone.parameters())
    method.theta_step(x, y, engine)
    full, detached = reference_grads(False), reference_grads(True)
    for g, f in zip(got, full, strict=True):
        torch.testing.assert_close(g, f)
    assert any(not torch.allclose(f, d) for f, d in zip(full, detached, strict=True))


def test_phi_schedule_over_an_epoch(build: Build, batch: Batch) -> None:
    method, engine = build(phi_interval=10)
    for step in range(25):
        method.training_step(*batch(6), step, engine)
    assert engine.steps == {"backbone": 50, "gater": 6}  # φ at steps 0, 10, 20, two halves each


def test_order_halves_and_modes_within_a_batch(build: Build, batch: Batch) -> None:
    method, engine = build(phi_interval=3)
    calls: list[tuple[torch.Tensor, bool]] = []
    method.backbone.register_forward_hook(lambda m, i, _o: calls.append((i[0], m.training)))
    x, y = batch(5)
    method.training_step(x, y, 3, engine)
    h1, h2 = x[:3], x[3:]  # the first half gets the extra sample
    expected = [(h1, True), (h2, False), (h2, True), (h1, False)]
    assert len(calls) == 4
    for (got_x, got_mode), (want_x, want_mode) in zip(calls, expected, strict=True):
        assert torch.equal(got_x, want_x) and got_mode == want_mode
    calls.clear()
    method.training_step(x, y, 4, engine)  # not a φ step
    assert [(c[0].shape[0], c[1]) for c in calls] == [(3, True), (2, True)]


# --------------------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("soft", [False, True])
def test_hard_and_soft_targets_train(build: Build, soft: bool, batch: Batch) -> None:
    method, engine = build(phi_interval=2, engine_lr=0.2)
    x, y = batch(16, soft=soft)
    outputs = [method.training_step(x, y, step, engine) for step in range(80)]
    losses = [out.loss for out in outputs]
    ce = [sum(per_sample_cross_entropy(z, y).mean() for z in out.logits) for out in outputs]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5  # the floor λΣĉ_k is not reachable
    floor = 3 * float(torch.special.entr(y).sum(dim=1).mean()) if soft else 0.0  # target entropy
    assert np.mean(ce[-5:]) - floor < 0.5 * (np.mean(ce[:5]) - floor)


@pytest.mark.parametrize("n", [5, 1])
def test_odd_and_single_sample_batches(build: Build, n: int, batch: Batch) -> None:
    method, engine = build()
    x, y = batch(n)
    out = method.training_step(x, y, 0, engine)
    assert engine.steps == {"backbone": 2, "gater": 2}  # one sample serves as both halves
    assert len(out.logits) == 3 and all(z.shape == (n, NUM_CLASSES) for z in out.logits)
    assert torch.equal(out.targets, y)
    shares = [out.metrics[f"A_exit{k}"] for k in (1, 2, 3)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert 0.25 <= out.metrics["expected_cost"] <= 1.0
    assert math.isfinite(out.loss)


def test_step_output_logits_are_the_full_batch_in_order(build: Build, batch: Batch) -> None:
    method, engine = build()
    x, y = batch(6)
    method.eval()  # compare against an eval forward: make the θ-steps change nothing
    engine.backbone_optimizer().optimizer.param_groups[0]["lr"] = 0.0
    out = method.training_step(x, y, 1, engine)
    method.backbone.train()
    with torch.no_grad():
        expected = method.backbone(x[:3])[0], method.backbone(x[3:])[0]
    assert not out.logits[0].requires_grad
    torch.testing.assert_close(out.logits[0], torch.cat(expected))


def test_frozen_variant_trains_only_the_gater(build: Build, batch: Batch) -> None:
    method, engine = build(frozen_backbone=True)
    assert method.backbone_parameters() == []
    method.train()
    assert not method.backbone.training and method.gater.training
    theta, phi = snapshot(method.backbone), snapshot(method.gater)
    for step in range(5):
        method.training_step(*batch(8), step, engine)
    assert same(theta, snapshot(method.backbone))  # weights and BN running stats, bit-identical
    assert not same(phi, snapshot(method.gater))
    assert engine.steps == {"gater": 10}  # both halves, every step, interval ignored
    assert not method.backbone.training


def test_exit_scores(build: Build, scores_of: ScoresOf) -> None:
    method, _ = build()
    x = torch.randn(7, 1, 8, 8)
    scores = scores_of(method, x)["score"]
    assert scores.shape == (3, 7)
    with torch.no_grad():
        P = method.gater(method.backbone(x))
    torch.testing.assert_close(scores[:2], P.T)
    assert torch.equal(scores[2], torch.ones(7))


def test_gater_mflops_count_under_the_score_rule_only(build: Build) -> None:
    """Linear(2, 500) + GELU + Linear(500, 1) + sigmoid: 2·500 + 500 (bias) + 500 + 500 + 1
    (bias) + 1 = 2502 FLOPs per non-final exit in the MSDNet convention; none at the last."""
    method, _ = build(hidden=500, features=["confidence", "entropy"])
    extra = method.extra_mflops()
    assert set(extra) == {"score"}
    np.testing.assert_allclose(extra["score"], [2502e-6, 2502e-6, 0.0])


# --------------------------------------------------------------------------- end to end


def easy_hard_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Easy half: label in the sign of pixel 0 (a linear exit gets it); hard half: XOR of
    pixels 1, 2 (only the deeper MLP exit gets it), pixel 0 is zero."""
    y = torch.randint(0, 2, (n,), generator=generator)
    easy = torch.arange(n) % 2 == 0
    x = 0.3 * torch.randn(n, 64, generator=generator)
    u = torch.randn(n, 2, generator=generator)
    xor = (u[:, 0] * u[:, 1] > 0).long()
    y = torch.where(easy, y, xor)
    x[:, 1:3] = u
    x[:, 0] = torch.where(easy, 3.0 * (2 * y - 1).float(), torch.zeros(n))
    return x.view(n, 1, 8, 8), y, easy


def test_end_to_end_gater_sends_easy_samples_early(
    build: Build, linear_mlp_cls: type, scores_of: ScoresOf
) -> None:
    generator = torch.Generator().manual_seed(0)
    method, engine = build(
        backbone=linear_mlp_cls(num_classes=2),
        mflops=(3.0, 10.0),
        lam=0.2,  # λ(ĉ_2 − ĉ_1) = 0.14 < the CE gap of hard samples (≈ 0.5), > that of easy ones
        phi_interval=1,
        phi_lr=1.0,
        hidden=32,
    )
    x, y, _ = easy_hard_data(1024, generator)
    for step in range(300):
        idx = torch.randint(0, len(y), (64,), generator=generator)
        method.training_step(x[idx], y[idx], step, engine)
    x_test, y_test, easy = easy_hard_data(1024, generator)
    P1 = scores_of(method, x_test)["score"][0]
    with torch.no_grad():
        logits = method.backbone(x_test)
    assert P1[easy].mean() > P1[~easy].mean() + 0.5
    assert (logits[0].argmax(1) == y_test)[easy].float().mean() > 0.95  # sanity: exit 1 learned


# --------------------------------------------------------------------------- gater diagnostics

PER_EXIT = ("A_exit", "argmaxA_exit", "ce_exit")  # k = 1..K
PER_GATED_EXIT = ("P_mean_exit", "P_std_exit")  # k = 1..K-1


def diagnostic_keys(num_exits: int) -> set[str]:
    keys = {f"{name}{k}" for name in PER_EXIT for k in range(1, num_exits + 1)}
    keys |= {f"{name}{k}" for name in PER_GATED_EXIT for k in range(1, num_exits)}
    return keys | {"expected_cost"}


def by_exit(metrics: dict[str, float], name: str, count: int) -> list[float]:
    return [metrics[f"{name}{k}"] for k in range(1, count + 1)]


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("n", [8, 1])
def test_step_diagnostics_keys_and_ranges(build: Build, batch: Batch, frozen: bool, n: int) -> None:
    method, engine = build(phi_interval=3, frozen_backbone=frozen)
    total_phi = 0.0
    for step in range(7):
        out = method.training_step(*batch(n), step, engine)
        m = out.metrics
        assert set(m) == diagnostic_keys(3)
        assert sum(by_exit(m, "A_exit", 3)) == pytest.approx(1.0, abs=1e-5)
        assert sum(by_exit(m, "argmaxA_exit", 3)) == pytest.approx(1.0, abs=1e-6)
        assert all(v in {i / n for i in range(n + 1)} for v in by_exit(m, "argmaxA_exit", 3))
        assert all(0.0 <= v <= 1.0 for v in by_exit(m, "P_mean_exit", 2))
        assert all(0.0 <= v <= 0.5 for v in by_exit(m, "P_std_exit", 2))  # P in [0, 1]
        if n == 1:
            assert by_exit(m, "P_std_exit", 2) == [0.0, 0.0]  # population std, not NaN
        assert all(v >= 0.0 for v in by_exit(m, "ce_exit", 3))
        assert 0.25 <= m["expected_cost"] <= 1.0
        phi_step = frozen or step % 3 == 0
        assert out.counts == {"phi_steps": 2.0 if phi_step else 0.0}
        total_phi += out.counts["phi_steps"]
    assert total_phi == engine.steps["gater"]  # counts the updates the engine really made


def a_by_hand(P: torch.Tensor, T: float) -> torch.Tensor:
    """Eq. 5 as products (eps in both factors), raised to 1/T and normalised (Eq. 9)."""
    columns, reach = [], torch.ones(P.shape[0])
    for k in range(P.shape[1]):
        columns.append(((P[:, k] + EPS) * reach) ** (1 / T))
        reach = reach * (1 - P[:, k] + EPS)
    columns.append(reach ** (1 / T))
    unnorm = torch.stack(columns, dim=1)
    return unnorm / unnorm.sum(dim=1, keepdim=True)


def confidence_of(logits: list[torch.Tensor]) -> torch.Tensor:
    """B×(K−1) max softmax of the gated exits, computed here rather than by the method."""
    return torch.stack([z.softmax(dim=-1).max(dim=-1).values for z in logits[:-1]], dim=1)


def steep_gater(gater: ExitGater, confidence: torch.Tensor, sharpness: float) -> None:
    """Sets MLP_k so that P_k = sigmoid(s·GELU((conf_k − median_k) / std_k)) exactly: P spread
    over (0, 1) and argmax A over several exits, so that the diagnostics are not trivial."""
    medians, stds = confidence.median(dim=0).values, confidence.std(dim=0)
    with torch.no_grad():
        for mlp, median, std in zip(gater.mlps, medians, stds, strict=True):
            first, last = mlp[0], mlp[-2]
            for param in (*first.parameters(), *last.parameters()):
                param.zero_()
            first.weight[0, 0] = 1 / std  # confidence is feature 0 of (confidence, entropy)
            first.bias[0] = -median / std
            last.weight[0, 0] = sharpness


@pytest.mark.parametrize("frozen", [False, True])
def test_step_diagnostics_match_an_independent_computation(
    build: Build, batch: Batch, frozen: bool
) -> None:
    method, engine = build(
        frozen_backbone=frozen, temperature=0.5, features=["confidence", "entropy"]
    )
    with torch.no_grad():  # sharper heads: confidences that differ between samples
        for head in method.backbone.heads:
            head[-1].weight.mul_(5.0)
    method._phi_handle.optimizer.param_groups[0]["lr"] = 0.0  # the step changes no weight
    if not frozen:
        engine.backbone_optimizer().optimizer.param_groups[0]["lr"] = 0.0
    x, y = batch(15)
    backbone = copy.deepcopy(method.backbone)
    with torch.no_grad():
        if frozen:  # φ half-steps: eval mode, per-sample, so the whole batch at once
            logits = backbone.eval()(x)
        else:  # θ half-steps: train mode, BatchNorm statistics of each half (8 + 7)
            halves = [backbone.train()(x[:8]), backbone(x[8:])]
            logits = [torch.cat(zs) for zs in zip(*halves, strict=True)]
    confidence = confidence_of(logits)
    steep_gater(method.gater, confidence, sharpness=5.0)

    out = method.training_step(x, y, 1, engine)  # step 1: θ half-steps only (interval 10)

    standardized = (confidence - confidence.median(dim=0).values) / confidence.std(dim=0)
    P = torch.sigmoid(5.0 * F.gelu(standardized))
    A = a_by_hand(P.double(), 0.5).float()
    ce = torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits], dim=1)
    chosen = np.bincount(A.argmax(dim=1).numpy(), minlength=3) / 15
    assert (chosen > 0).sum() >= 2 and (P.std(dim=0) > 0.05).all()  # a non-trivial batch
    expected = {
        "A_exit": A.mean(dim=0).tolist(),
        "argmaxA_exit": chosen.tolist(),
        "ce_exit": ce.mean(dim=0).tolist(),
        "P_mean_exit": P.mean(dim=0).tolist(),
        "P_std_exit": ((P - P.mean(dim=0)) ** 2).mean(dim=0).sqrt().tolist(),  # population
    }
    for name, values in expected.items():
        assert by_exit(out.metrics, name, len(values)) == pytest.approx(values, abs=1e-5), name
    costs = torch.tensor([0.25, 0.5, 1.0])  # ĉ of MFLOPs (1, 2, 4)
    assert out.metrics["expected_cost"] == pytest.approx(float((A * costs).sum(1).mean()), abs=1e-5)


@pytest.mark.parametrize("frozen", [False, True])
def test_a_step_reads_the_device_once(
    build: Build, batch: Batch, frozen: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reported number leaves the device in one transfer (one CUDA sync per step)."""
    method, engine = build(frozen_backbone=frozen)
    reads: list[str] = []
    for name in ("tolist", "item", "__float__", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _name: str = name, _f: Any = original) -> Any:
            reads.append(_name)
            return _f(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    method.training_step(*batch(6), 0, engine)  # a φ step
    assert reads == ["tolist"]


def test_collapse_warning_names_exit_share_lambda_and_temperature(build: Build) -> None:
    method, _ = build(lam=2.0, temperature=0.5)
    ce = {"ce_exit1": 1.1, "ce_exit2": 1.0, "ce_exit3": 0.95}
    collapsed = {"A_exit1": 0.97, "A_exit2": 0.02, "A_exit3": 0.01, **ce}
    (message,) = method.epoch_warnings(collapsed, last_epoch=True)
    assert "exit 1 of 3" in message and "0.970" in message
    assert "λ=2" in message and "T=0.5" in message
    assert "cost term dominates" in message and "every sample to exit 1" in message
    assert "1.1/1/0.95" in message and "0.5/1/2" in message  # mean CE vs λ·ĉ per exit
    balanced = {"A_exit1": 0.4, "A_exit2": 0.35, "A_exit3": 0.25, **ce}
    assert method.epoch_warnings(balanced, last_epoch=True) == []
    assert method.epoch_warnings(collapsed, last_epoch=False) == []  # only the final state


def test_collapse_warning_at_the_last_exit_asks_for_more_cost(build: Build) -> None:
    method, _ = build(lam=0.1, temperature=1.0)
    (message,) = method.epoch_warnings(
        {"A_exit1": 0.01, "A_exit2": 0.01, "A_exit3": 0.98}, last_epoch=True
    )
    assert "exit 3 of 3" in message and "λ=0.1" in message and "T=1" in message
    assert "last exit" in message and "larger λ" in message
    assert "Mean CE" not in message  # no CE columns in the row, nothing invented
