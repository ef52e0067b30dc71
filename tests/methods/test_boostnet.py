"""BoostNet (spec §6): the boosted ensemble (recursion, stop-gradient, train/test agreement),
MSDNet's gradient rescaling, and a tiny run whose outputs, validation and budgeted curve are
the ensemble of its heads."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from eebench.backbones import create_model
from eebench.backbones.common import split_gradient
from eebench.backbones.flops import exit_costs, exit_mflops
from eebench.methods import POSTHOC_METHODS, TRAIN_METHODS, HyperparameterError, method_class
from eebench.methods.base import TRAIN_FIGURES
from eebench.methods.boostnet import BoostNet, reweights, training_inputs
from eebench.methods.inference import ExitByExit, replay
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.evaluate import evaluate_run
from eebench.pipelines.evaluation.outputs import read_outputs
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.train import train_run
from eebench.pipelines.workflow.runs import build_method, make_loaders
from tests.tiny_runs import (
    SYNTHETIC,
    reference_and_killed,
    tiny_run,
    train_subprocess,
    trained_weights,
)

MakeMethod = Callable[..., tuple[Any, Any]]
Batch = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def hparams(**overrides: Any) -> dict[str, Any]:
    return BoostNet.resolve_hparams("cifar", overrides)


# --------------------------------------------------------------------------- ensemble


def test_reweight_is_constant_a_linspace_or_one_per_exit() -> None:
    assert reweights([0.5], 3) == (0.5, 0.5, 0.5)
    assert reweights([0.2, 0.6], 3) == pytest.approx((0.2, 0.4, 0.6))
    assert reweights([1.0, 0.0, 2.0], 3) == (1.0, 0.0, 2.0)
    with pytest.raises(HyperparameterError, match=r"1 value .*, 2 .* or one per exit \(3\)"):
        reweights([0.1, 0.2, 0.3, 0.4], 3)


@pytest.mark.parametrize(
    ("reweight", "expected"),
    [
        ([0.5], [[1.0, 0.0], [0.5, 2.0], [4.25, -1.0]]),
        # r = 0.2, 0.4, 0.6: F_2 = f_2 + 0.4·F_1, F_3 = f_3 + 0.6·F_2 (r_1 unused).
        ([0.2, 0.6], [[1.0, 0.0], [0.4, 2.0], [4.24, -0.8]]),
    ],
)
def test_exit_k_predicts_the_hand_computed_ensemble(
    make_method: MakeMethod, reweight: list[float], expected: list[list[float]]
) -> None:
    method, _ = make_method(BoostNet, hparams(reweight=reweight))
    heads = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[4.0, -2.0]])]
    (exits,) = replay([method], [torch.zeros(1, 1)] * 3, heads)
    got = [out.logits[0].tolist() for out in exits]
    assert got == [pytest.approx(row) for row in expected]


def test_training_inputs_are_the_evaluated_ensembles_for_non_constant_r(
    make_method: MakeMethod, batch: Batch
) -> None:
    """The step's per-exit logits (what its loss reads) equal exit-by-exit inference on the
    same weights and batch (train-mode BN: same batch statistics), r = 0.2, 0.6, 1.0. The
    code's training recursion (exit 3's input f_3 + r_2(f_2 + r_1·f_1)) would differ."""
    method, engine = make_method(BoostNet, hparams(reweight=[0.2, 1.0]))
    x, target = batch(6)
    method.train()
    with torch.no_grad():
        evaluated = [out.logits for out in ExitByExit(method.backbone, [method]).all_exits(x)]
        heads = method.backbone(x)
    out = method.training_step(x, target, 0, engine)
    assert out.logits is not None
    for trained, tested in zip(out.logits, evaluated, strict=True):
        torch.testing.assert_close(trained, tested, rtol=1e-6, atol=1e-6)
    expected_loss = sum(F.cross_entropy(z, target) for z in evaluated)
    assert out.loss == pytest.approx(float(expected_loss), rel=1e-6)
    shifted = heads[2] + 0.6 * (heads[1] + 0.2 * heads[0])  # the code's exit-3 input
    assert not torch.allclose(shifted, evaluated[2], atol=1e-3)


def test_loss_k_trains_only_f_k_of_the_exits_logits() -> None:
    """∂CE(input_k)/∂f_j = 0 for every j < k (the earlier ensemble is a constant)."""
    weak = [torch.randn(4, 3, requires_grad=True) for _ in range(3)]
    inputs = training_inputs(weak, reweights([0.3, 0.9], 3))
    target = torch.tensor([0, 1, 2, 0])
    for k, z in enumerate(inputs):
        grads = torch.autograd.grad(F.cross_entropy(z, target), weak, allow_unused=True)
        assert all(g is None or not g.any() for g in grads[:k]), k
        assert grads[k] is not None and grads[k].abs().sum() > 0, k


def test_earlier_heads_get_no_gradient_from_the_last_exits_loss(
    make_method: MakeMethod, batch: Batch
) -> None:
    method, _ = make_method(BoostNet, hparams())
    x, target = batch(6)
    inputs = training_inputs(method.backbone(x), method.reweight)
    F.cross_entropy(inputs[-1], target).backward()
    for k, head in enumerate(method.backbone.heads):
        grads = [p.grad for p in head.parameters()]
        if k < len(inputs) - 1:
            assert all(g is None or not g.any() for g in grads), k
        else:
            assert all(g is not None and g.any() for g in grads)


def test_the_ensemble_costs_one_multiply_add_per_class_after_the_first_exit(
    make_method: MakeMethod,
) -> None:
    method, _ = make_method(BoostNet, hparams())
    classes = method.ctx.num_classes
    np.testing.assert_array_equal(
        method.extra_mflops()["predict"], [0.0, classes / 1e6, classes / 1e6]
    )


def test_display_is_boostnets_own_in_the_train_figures() -> None:
    display = BoostNet.display_of()
    assert (display.label, display.figures) == ("BoostNet", TRAIN_FIGURES)
    others = [
        method_class(name).display_of(variant)
        for name in [*TRAIN_METHODS.names(), *POSTHOC_METHODS.names()]
        if name != BoostNet.name
        for variant in ("", *method_class(name).variants)
    ]
    assert display.color not in {d.color for d in others}
    assert display.marker not in {d.marker for d in others if d.figures == TRAIN_FIGURES}


# --------------------------------------------------------------------------- gradient rescaling


@pytest.mark.parametrize("readers", [1, 2, 4])
def test_split_gradient_scales_head_and_later_branches(readers: int) -> None:
    """Backward into h = [∂head + (n−1)·∂later]/n; both branches are h, bit for bit."""
    h = torch.randn(2, 3, requires_grad=True)
    w_head, w_later = torch.randn(2, 3), torch.randn(2, 3)
    head, later = split_gradient(h, readers)
    assert torch.equal(head, h) and torch.equal(later, h)
    ((w_head * head).sum() + (w_later * later).sum()).backward()
    torch.testing.assert_close(h.grad, (w_head + (readers - 1) * w_later) / readers)


def coarsest_maps(model: torch.nn.Module) -> list[torch.Tensor]:
    """Hooks that keep each block's coarsest map, before any rescaling, with its gradient."""
    maps: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, inputs: Any, output: list[torch.Tensor]) -> None:
        output[-1].retain_grad()
        maps.append(output[-1])

    for stage in model.stages:
        stage.layers.register_forward_hook(keep)
    return maps


def test_msdnet_rescaling_averages_the_gradient_of_each_coarsest_map() -> None:
    """Forward unchanged; the gradient of Σ_k CE_k into block k's coarsest map is the plain
    one / (K−k): the head's share ×1/(K−k), the later blocks' ×(K−k−1)/(K−k), and every later
    exit's own gradient already averaged the same way (0-based k)."""
    plain = create_model("msdnet_fmnist", 4).train()
    rescaled = copy.deepcopy(plain)
    rescaled.set_gradient_rescaling(True)
    x, target = torch.randn(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 0])
    grads, logits = [], []
    for model in (plain, rescaled):
        maps = coarsest_maps(model)
        out = model(x)
        sum(F.cross_entropy(z, target) for z in out).backward()
        grads.append([m.grad for m in maps])
        logits.append(out)
    assert all(torch.equal(a, b) for a, b in zip(*logits, strict=True))
    num_exits = plain.num_exits
    for k, (g_plain, g_rescaled) in enumerate(zip(*grads, strict=True)):
        torch.testing.assert_close(g_rescaled, g_plain / (num_exits - k))


def test_rescaling_leaves_the_flops_count_alone() -> None:
    """The count traces in eval mode, where the stages keep the plain graph."""
    model = create_model("msdnet_fmnist", 4)
    model.set_gradient_rescaling(True)
    assert exit_costs(model) == exit_costs(create_model("msdnet_fmnist", 4))


@pytest.mark.parametrize(("mode", "on"), [("auto", True), ("on", True), ("off", False)])
def test_rescaling_is_on_for_msdnet_unless_turned_off(
    make_method: MakeMethod, mode: str, on: bool
) -> None:
    backbone = create_model("msdnet_fmnist", 3)
    make_method(BoostNet, hparams(gradient_rescaling=mode), backbone, mflops=(1, 2, 3, 4))
    assert [stage.readers for stage in backbone.stages] == ([4, 3, 2, 1] if on else [0] * 4)


def test_rescaling_asked_of_ranet_names_the_backbone_and_the_fix(make_method: MakeMethod) -> None:
    ranet = create_model("ranet_fmnist", 3)
    make_method(BoostNet, hparams(), ranet, mflops=tuple(range(1, ranet.num_exits + 1)))
    with pytest.raises(HyperparameterError, match=r"ranet_fmnist cannot rescale .* 'auto'"):
        make_method(BoostNet, hparams(gradient_rescaling="on"), ranet)
    with pytest.raises(HyperparameterError, match="one of"):
        make_method(BoostNet, hparams(gradient_rescaling="yes"))


# --------------------------------------------------------------------------- a tiny run


def boostnet_run(**overrides: Any) -> dict[str, Any]:
    """The tiny synthetic run trained by BoostNet with r = 0.3 → 0.9 (non-constant)."""
    return tiny_run(
        method=BoostNet.name,
        hparams=BoostNet.resolve_hparams("synthetic", {"reweight": [0.3, 0.9]}),
        **overrides,
    )


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Trained with model selection on val, then evaluated."""
    torch.set_num_threads(1)
    run = boostnet_run(selection="best_val")
    run_dir = tmp_path_factory.mktemp("boostnet") / "run"
    train_run(run, run_dir, run_dir.parent / "splits")
    evaluate_run(run, run_dir, run_dir.parent / "splits")
    return run, run_dir


def hand_ensembles(run: dict[str, Any], run_dir: Path) -> dict[str, np.ndarray]:
    """Per split, K×N×C: F_k recomputed in NumPy from the trained backbone's plain forward."""
    loaders = make_loaders(run, run_dir.parent / "splits", torch.device("cpu"))
    method = build_method(run, SYNTHETIC["num_classes"], "synthetic", 1, torch.device("cpu"))
    method.load_state_dict(trained_weights(run_dir))
    method.eval()
    r = np.linspace(0.3, 0.9, method.ctx.num_exits)
    ensembles = {}
    for split in ("val", "test"):
        with torch.no_grad():
            per_batch = [method.backbone(x) for x, _ in getattr(loaders, split).iterate(0)]
        heads = np.stack([torch.cat(z).numpy() for z in zip(*per_batch, strict=True)])
        F_k = [heads[0]]
        for k in range(1, len(heads)):
            F_k.append(heads[k] + r[k] * F_k[-1])
        ensembles[split] = np.stack(F_k)
        assert not np.allclose(ensembles[split][1:], heads[1:], atol=1e-3)
    return ensembles


def test_run_outputs_are_the_ensembles_of_the_heads(evaluated: tuple[dict, Path]) -> None:
    run, run_dir = evaluated
    outputs = read_outputs(run_dir)
    for split, expected in hand_ensembles(run, run_dir).items():
        np.testing.assert_allclose(outputs.split(split).logits, expected, rtol=1e-4, atol=1e-4)
    classes = SYNTHETIC["num_classes"]
    added = classes / 1e6 * np.arange(outputs.num_exits)
    np.testing.assert_allclose(outputs.flops - added, exit_mflops(run["backbone"], classes))


def test_validation_and_selection_read_the_ensemble(evaluated: tuple[dict, Path]) -> None:
    """The selected epoch is the first best of val top-1 at the last exit, and its logged
    val top-1 of every exit is the evaluated ensemble's."""
    run, run_dir = evaluated
    ensemble = hand_ensembles(run, run_dir)["val"]
    log = pd.read_csv(run_dir / "train_log.csv")
    best = log.loc[log[f"val_top1_exit{len(ensemble)}"].idxmax()]
    labels = read_outputs(run_dir).val.labels
    top1 = 100 * (ensemble.argmax(-1) == labels).mean(axis=1)
    np.testing.assert_allclose([best[f"val_top1_exit{k + 1}"] for k in range(len(top1))], top1)


def test_budgeted_curve_is_the_ensembles(evaluated: tuple[dict, Path]) -> None:
    """Thresholds on the max softmax of F_k on val, applied to F_k on test (spec §0)."""
    run, run_dir = evaluated
    outputs = read_outputs(run_dir)
    ensembles = hand_ensembles(run, run_dir)
    expected = protocol.budgeted_from_logits(
        ensembles["val"], outputs.val.labels, ensembles["test"], outputs.test.labels, outputs.flops
    )
    written = pd.read_csv(run_dir / "budgeted.csv")
    written = written[written["policy"] == "max_softmax"]
    np.testing.assert_allclose(written["top1"], expected["top1"])
    np.testing.assert_allclose(written["mflops"], expected["mflops"])


def test_sigkill_mid_epoch_then_resume_gives_identical_run(tmp_path: Path) -> None:
    """The rescaling is set when the method is built, so a resumed run trains with it too."""
    torch.set_num_threads(1)
    reference, killed, left = reference_and_killed(boostnet_run(), tmp_path)
    assert ckpt.load_torch(left[-1], ("position",))["position"]["batch"] > 0
    proc = train_subprocess(tmp_path / "killed.yaml", killed)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    expected, got = (trained_weights(d) for d in (reference, killed))
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
