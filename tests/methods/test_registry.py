"""Every registered method and exit policy checked the same way (timm-style), unknown names,
and the extension points exercised by a post-hoc calibrator and an exit policy defined here."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from eebench.backbones.common import ACTIVATIONS
from eebench.methods import (
    CALIBRATORS,
    EXIT_POLICIES,
    TRAIN_METHODS,
    ExitPolicy,
    HyperparameterError,
    PostHocCalibrator,
    method_kind,
)
from eebench.methods.base import Calibrated, RunOutputs
from eebench.pipelines import protocol
from eebench.pipelines.calibrate import calibrate_run
from eebench.pipelines.evaluate import run_curves
from eebench.pipelines.io import read_yaml, write_npz
from eebench.pipelines.recipes import RECIPES
from eebench.pipelines.registry import UnknownNameError
from eebench.pipelines.tables import read_table

FAMILIES = ("cifar", "imagenet", "fmnist", "synthetic")
VARIANT_KEYS = {"hparams", "recipe", "activation", "init_from"}
#: Every registered train method with every variant ('' = the default variant).
METHOD_VARIANTS = [
    pytest.param(name, variant, id=f"{name}-{variant}" if variant else name)
    for name in TRAIN_METHODS.names()
    for variant in ("", *TRAIN_METHODS.get(name).variants)
]
K, N_VAL, N_TEST, C = 3, 50, 80, 5  # exits, val and test samples, classes of the fake runs
FLOPS = np.array([1.0, 2.5, 4.0])
Batch = Callable[..., tuple[torch.Tensor, torch.Tensor]]
MakeMethod = Callable[..., tuple[Any, Any]]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Over the last axis, stable for any logit scale."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# --------------------------------------------------------------------------- train methods


@pytest.mark.parametrize("name", TRAIN_METHODS.names())
def test_hparams_resolve_for_every_family_and_variant(name: str) -> None:
    cls = TRAIN_METHODS.get(name)
    assert set(cls.hparams_by_family) <= set(FAMILIES)  # a typo would silently never apply
    for family in FAMILIES:
        assert cls.resolve_hparams(family).keys() == cls.hparams.keys(), family
        for variant in cls.variants:
            overrides = cls.variant(variant).get("hparams", {})
            resolved = cls.resolve_hparams(family, overrides)
            assert {key: resolved[key] for key in overrides} == overrides, (family, variant)


@pytest.mark.parametrize("name", TRAIN_METHODS.names())
def test_variant_recipes_activations_and_init_from_exist(name: str) -> None:
    for variant, definition in TRAIN_METHODS.get(name).variants.items():
        assert set(definition) <= VARIANT_KEYS, variant
        if "recipe" in definition:
            assert definition["recipe"] in RECIPES, variant
        if "activation" in definition:
            assert definition["activation"] in ACTIVATIONS, variant
        if "init_from" in definition:
            source, _, source_variant = definition["init_from"].partition("-")
            assert source in TRAIN_METHODS, variant
            TRAIN_METHODS.get(source).variant(source_variant)  # raises for an unknown variant


def build_variant(make_method: MakeMethod, name: str, variant: str) -> tuple[Any, Any]:
    """The method's variant on the tiny conv backbone, with its resolved hyperparameters."""
    cls = TRAIN_METHODS.get(name)
    return make_method(cls, cls.resolve_hparams("cifar", cls.variant(variant).get("hparams")))


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize(("name", "variant"), METHOD_VARIANTS)
def test_one_training_step_gives_a_finite_loss_and_every_exits_logits(
    make_method: MakeMethod, batch: Batch, name: str, variant: str, soft: bool
) -> None:
    method, engine = build_variant(make_method, name, variant)
    x, target = batch(6, soft=soft)
    out = method.training_step(x, target, 0, engine)
    assert math.isfinite(out.loss)
    assert out.logits is not None and len(out.logits) == method.ctx.num_exits
    shape = (6, method.ctx.num_classes)
    assert all(z.shape == shape and torch.isfinite(z).all() for z in out.logits)
    assert sum(engine.steps.values()) >= 1  # the step optimised something


@pytest.mark.parametrize(("name", "variant"), METHOD_VARIANTS)
def test_exit_scores_are_k_by_b_in_unit_interval_iff_declared(
    make_method: MakeMethod, batch: Batch, name: str, variant: str
) -> None:
    method, _ = build_variant(make_method, name, variant)
    method.eval()
    with torch.no_grad():
        logits, features = method.backbone(batch(7)[0], return_features=True)
    scores = method.exit_scores(logits, features)
    if not method.has_exit_score:
        assert scores is None
        return
    assert scores.shape == (method.ctx.num_exits, 7)
    assert ((scores >= 0) & (scores <= 1)).all()


# --------------------------------------------------------------------------- post-hoc calibrator


class PerExitTemperature(PostHocCalibrator):
    """Per-exit temperature scaling: each exit's T from a grid, the one of least val NLL."""

    name: ClassVar[str] = "test_temperature"
    hparams: ClassVar[dict[str, Any]] = {"grid": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]}

    def fit(self, outputs: RunOutputs) -> None:
        """Val only: test logits and labels are never read."""
        grid = np.asarray(self.hp["grid"], dtype=np.float64)
        rows = np.arange(len(outputs.val_labels))

        def nll(logits: np.ndarray) -> float:
            return float(-log_softmax(logits)[rows, outputs.val_labels].mean())

        self.temperatures = np.array(
            [grid[np.argmin([nll(z / t) for t in grid])] for z in outputs.val_logits]
        )

    def transform(self, outputs: RunOutputs, split: str) -> Calibrated:
        logits = getattr(outputs, f"{split}_logits") / self.temperatures[:, None, None]
        log_probs = log_softmax(logits)
        return Calibrated(log_probs=log_probs, scores=np.exp(log_probs.max(axis=-1)))


@pytest.fixture
def calibrator(monkeypatch: pytest.MonkeyPatch) -> type[PerExitTemperature]:
    """PerExitTemperature, registered for this test only."""
    monkeypatch.setitem(CALIBRATORS._entries, PerExitTemperature.name, PerExitTemperature)
    return PerExitTemperature


def fake_outputs() -> dict[str, np.ndarray]:
    """protocol.md keys of a trained run with random logits (K×N×C) and labels."""
    rng = np.random.default_rng(0)
    return {
        "val_logits": rng.normal(0.0, 3.0, (K, N_VAL, C)).astype(np.float32),
        "val_labels": rng.integers(0, C, N_VAL),
        "test_logits": rng.normal(0.0, 3.0, (K, N_TEST, C)).astype(np.float32),
        "test_labels": rng.integers(0, C, N_TEST),
        "flops": FLOPS,
    }


def calibrated_run(source: Path, method: type[PostHocCalibrator]) -> dict[str, Any]:
    return {
        "dataset": "synthetic",
        "backbone": "msdnet_fmnist",
        "method": method.name,
        "variant": "",
        "seed": 0,
        "hparams": method.resolve_hparams("synthetic"),
        "source": str(source),
    }


def test_calibrate_run_writes_a_calibrated_run_with_both_policies(
    tmp_path: Path, calibrator: type[PerExitTemperature]
) -> None:
    source = fake_outputs()
    write_npz(tmp_path / "source" / "outputs.npz", **source)
    run = calibrated_run(tmp_path / "source", calibrator)
    run_dir = tmp_path / "calibrated"
    calibrate_run(run, run_dir)

    assert read_yaml(run_dir / "config.yaml") == run
    with np.load(run_dir / "outputs.npz") as data:
        out = {key: data[key] for key in data.files}
    assert set(out) == {*source, "val_scores", "test_scores"}
    for key in ("val_labels", "test_labels", "flops"):
        np.testing.assert_array_equal(out[key], source[key])
    for split, n in (("val", N_VAL), ("test", N_TEST)):
        log_probs = out[f"{split}_logits"]
        assert log_probs.shape == (K, n, C) and out[f"{split}_scores"].shape == (K, n)
        np.testing.assert_allclose(np.log(np.exp(log_probs).sum(-1)), 0.0, atol=1e-5)
        np.testing.assert_allclose(out[f"{split}_scores"], np.exp(log_probs.max(-1)), rtol=1e-6)
        # Temperature scaling keeps every prediction, so the argmax is the source's.
        np.testing.assert_array_equal(log_probs.argmax(-1), source[f"{split}_logits"].argmax(-1))
    # Logits of scale 3 that ignore the labels are overconfident: every exit's T is above 1.
    confidence = protocol.softmax_confidence(source["val_logits"])
    assert (out["val_scores"].mean(axis=1) < confidence.mean(axis=1)).all()

    anytime = read_table(run_dir / "anytime.csv")
    expected = protocol.anytime_curve(source["test_logits"], source["test_labels"], FLOPS)
    np.testing.assert_allclose(anytime["top1"], expected["top1"])
    budgeted = read_table(run_dir / "budgeted.csv")
    assert budgeted.groupby("policy").size().to_dict() == {"max_softmax": 39, "score": 39}
    assert set(budgeted["method"]) == {calibrator.name}


def test_calibrate_run_without_source_outputs_names_the_evaluate_command(
    tmp_path: Path, calibrator: type[PerExitTemperature]
) -> None:
    run = calibrated_run(tmp_path / "source", calibrator)
    with pytest.raises(
        FileNotFoundError, match=r"outputs\.npz does not exist: run `eebench evaluate`"
    ):
        calibrate_run(run, tmp_path / "calibrated")
    assert not (tmp_path / "calibrated" / "config.yaml").exists()


# --------------------------------------------------------------------------- unknown names


def test_unknown_method_lists_every_registered_method(
    calibrator: type[PerExitTemperature],
) -> None:
    assert method_kind(calibrator.name) == "posthoc"
    assert {method_kind(name) for name in TRAIN_METHODS} == {"train"}
    with pytest.raises(HyperparameterError, match="unknown method 'nope'") as error:
        method_kind("nope")
    listed = str(error.value).rsplit(": ", 1)[1].split(", ")
    assert listed == [*TRAIN_METHODS.names(), *CALIBRATORS.names()]
    assert calibrator.name in listed


def test_unknown_exit_policy_lists_every_policy() -> None:
    with pytest.raises(UnknownNameError, match="unknown exit policy 'nope'") as error:
        EXIT_POLICIES.get("nope")
    listed = str(error.value).rsplit(": ", 1)[1].split(", ")
    assert listed == EXIT_POLICIES.names()
    assert {"max_softmax", "score"} <= set(listed)


# --------------------------------------------------------------------------- exit policies


class Top2Margin(ExitPolicy):
    """Exit score: the gap between the two largest softmax probabilities."""

    name: ClassVar[str] = "test_margin"

    def scores(self, logits: np.ndarray, provided: np.ndarray | None) -> np.ndarray:
        probs = np.exp(log_softmax(np.asarray(logits, dtype=np.float64)))
        top2 = np.sort(probs, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0]


def test_custom_exit_policy_gives_a_valid_budgeted_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = fake_outputs()
    policy = Top2Margin()
    val, test = (policy.scores(outputs[f"{s}_logits"], None) for s in ("val", "test"))
    assert val.shape == (K, N_VAL) and ((val >= 0) & (val <= 1)).all()
    correct = outputs["test_logits"].argmax(-1) == outputs["test_labels"]
    curve = protocol.budgeted_curve(val, test, correct, FLOPS)

    assert len(curve) == 39 and list(curve["p"]) == list(protocol.P_VALUES)
    np.testing.assert_allclose(curve["q"], curve["p"] / 20)
    fractions = np.stack([protocol.parse_exit_fractions(f) for f in curve["exit_fractions"]])
    thresholds = protocol.fit_thresholds_reference(val, protocol.budget_proportions(K))
    exits = protocol.assign_exits_reference(test, thresholds)
    expected = np.stack([np.bincount(row, minlength=K) for row in exits]) / N_TEST
    np.testing.assert_allclose(fractions, expected)
    np.testing.assert_allclose(curve["mflops"], expected @ FLOPS)
    np.testing.assert_allclose(curve["top1"], 100 * correct[exits, np.arange(N_TEST)].mean(axis=1))

    # Registered, the evaluate stage adds its block to every run's budgeted rows.
    monkeypatch.setitem(EXIT_POLICIES._entries, Top2Margin.name, Top2Margin)
    ident = {"dataset": "synthetic", "backbone": "b", "method": "m", "variant": "", "seed": 0}
    _, budgeted = run_curves(outputs, ident)
    ours = budgeted[budgeted["policy"] == Top2Margin.name].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[curve.columns], curve)


def test_score_policy_without_provided_scores_is_a_clear_error() -> None:
    policy = EXIT_POLICIES.get("score")()
    assert not policy.applies_to(set(fake_outputs()))
    with pytest.raises(ValueError, match=r"needs val_scores/test_scores.*use the 'max_softmax'"):
        policy.scores(fake_outputs()["val_logits"], None)
