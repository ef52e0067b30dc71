"""Every registered method and exit rule checked the same way (timm-style), unknown names,
and the extension points exercised by a post-hoc method and an exit rule defined here."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from eebench.backbones.common import ACTIVATIONS
from eebench.methods import (
    EXIT_RULES,
    POSTHOC_METHODS,
    TRAIN_METHODS,
    ExitOutput,
    ExitRule,
    HyperparameterError,
    PostHocMethod,
    method_class,
    method_kind,
)
from eebench.methods.base import MAX_SOFTMAX
from eebench.pipelines.analysis.tables import read_table
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.calibrate import calibrate_run
from eebench.pipelines.evaluation.evaluate import fit_decisions, run_curves
from eebench.pipelines.evaluation.outputs import (
    ExitDecision,
    RunOutputs,
    SplitOutputs,
    read_decisions,
    read_outputs,
    write_outputs,
)
from eebench.pipelines.services.io import read_yaml
from eebench.pipelines.services.registry import UnknownNameError
from eebench.recipes import RECIPES

FAMILIES = ("cifar", "imagenet", "fmnist", "synthetic")
VARIANT_KEYS = {"hparams", "recipe", "activation", "init_from", "display"}
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
    cls = TRAIN_METHODS.get(name)
    for variant, definition in cls.variants.items():
        assert set(definition) <= VARIANT_KEYS, variant
        if "recipe" in definition:
            assert definition["recipe"] in RECIPES, variant
        if "activation" in definition:
            assert definition["activation"] in ACTIVATIONS, variant
    # Every variant's init_from, its own or the class default.
    for variant in ("", *cls.variants):
        if cls.init_source(variant):
            source, _, source_variant = cls.init_source(variant).partition("-")
            assert source in TRAIN_METHODS and source != name, variant
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
def test_exit_scores_are_k_by_b_in_unit_interval_as_declared(
    make_method: MakeMethod, batch: Batch, scores_of: Callable[..., Any], name: str, variant: str
) -> None:
    method, _ = build_variant(make_method, name, variant)
    scores = scores_of(method, batch(7)[0])
    assert set(scores) == {MAX_SOFTMAX, *method.score_names}
    for values in scores.values():
        assert values.shape == (method.ctx.num_exits, 7)
        assert ((values >= 0) & (values <= 1)).all()


@pytest.mark.parametrize(("name", "variant"), METHOD_VARIANTS)
def test_extra_mflops_are_per_exit_and_name_a_score_or_predict(
    make_method: MakeMethod, name: str, variant: str
) -> None:
    method, _ = build_variant(make_method, name, variant)
    for key, values in method.extra_mflops().items():
        assert key == "predict" or key in method.score_names
        assert values.shape == (method.ctx.num_exits,) and (values >= 0).all()


@pytest.mark.parametrize("name", [*TRAIN_METHODS.names(), *POSTHOC_METHODS.names()])
def test_every_display_names_registered_figures_and_rules(name: str) -> None:
    from eebench.pipelines.analysis.figures import FIGURE_NAMES

    cls = method_class(name)
    for variant in ("", *cls.variants):
        display = cls.display_of(variant)
        assert set(display.figures) <= set(FIGURE_NAMES), variant
        assert display.main_rule in EXIT_RULES, variant
        # A display limited to some rules has its main curve among them.
        assert set(display.rules) <= set(EXIT_RULES.names()), variant
        assert not display.rules or display.main_rule in display.rules, variant
    assert set(cls.exit_rules) <= set(EXIT_RULES.names())


# --------------------------------------------------------------------------- post-hoc method


class PerExitTemperature(PostHocMethod):
    """Per-exit temperature scaling: each exit's T from a grid, the one of least val NLL."""

    name: ClassVar[str] = "test_temperature"
    hparams: ClassVar[dict[str, Any]] = {"grid": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]}
    score_names: ClassVar[tuple[str, ...]] = ("score",)

    def fit(self, outputs: RunOutputs) -> None:
        """Val only: test logits and labels are never read."""
        grid = np.asarray(self.hp["grid"], dtype=np.float64)
        rows = np.arange(len(outputs.val.labels))

        def nll(logits: np.ndarray) -> float:
            return float(-log_softmax(logits)[rows, outputs.val.labels].mean())

        best = [grid[np.argmin([nll(z / t) for t in grid])] for z in outputs.val.logits]
        self.register_buffer("temperatures", torch.tensor(best, dtype=torch.float32))

    def exit_output(self, k: int, head: ExitOutput, memory: dict) -> ExitOutput:
        log_probs = torch.log_softmax(head.logits / self.temperatures[k], dim=-1)
        return ExitOutput(log_probs, head.features, {"score": log_probs.exp().amax(dim=-1)})


@pytest.fixture
def calibrator(monkeypatch: pytest.MonkeyPatch) -> type[PerExitTemperature]:
    """PerExitTemperature, registered for this test only."""
    monkeypatch.setitem(POSTHOC_METHODS._entries, PerExitTemperature.name, PerExitTemperature)
    return PerExitTemperature


def fake_outputs() -> RunOutputs:
    """A trained run's outputs with random logits (K×N×C) and labels."""
    rng = np.random.default_rng(0)
    split = {
        name: SplitOutputs(
            rng.normal(0.0, 3.0, (K, n, C)).astype(np.float32), rng.integers(0, C, n)
        )
        for name, n in (("val", N_VAL), ("test", N_TEST))
    }
    return RunOutputs(split["val"], split["test"], FLOPS)


def calibrated_run(source: Path, method: type[PostHocMethod]) -> dict[str, Any]:
    return {
        "dataset": "synthetic",
        "backbone": "msdnet_fmnist",
        "method": method.name,
        "variant": "",
        "seed": 0,
        "hparams": method.resolve_hparams("synthetic"),
        "source": str(source),
    }


def test_calibrate_run_writes_a_posthoc_run_with_both_rules(
    tmp_path: Path, calibrator: type[PerExitTemperature]
) -> None:
    source = fake_outputs()
    write_outputs(tmp_path / "source", source)
    run = calibrated_run(tmp_path / "source", calibrator)
    run_dir = tmp_path / "calibrated"
    calibrate_run(run, run_dir)

    assert read_yaml(run_dir / "config.yaml") == run
    out = read_outputs(run_dir)
    np.testing.assert_array_equal(out.flops, source.flops)
    for name in ("val", "test"):
        split, before = out.split(name), source.split(name)
        np.testing.assert_array_equal(split.labels, before.labels)
        assert split.scores.keys() == {"score"} and split.scores["score"].shape == (
            K,
            len(before.labels),
        )
        np.testing.assert_allclose(np.log(np.exp(split.logits).sum(-1)), 0.0, atol=1e-5)
        np.testing.assert_allclose(split.scores["score"], np.exp(split.logits.max(-1)), rtol=1e-5)
        # Temperature scaling keeps every prediction, so the argmax is the source's.
        np.testing.assert_array_equal(split.logits.argmax(-1), before.logits.argmax(-1))
    # Logits of scale 3 that ignore the labels are overconfident: every exit's T is above 1.
    confidence = protocol.softmax_confidence(source.val.logits)
    assert (out.val.scores["score"].mean(axis=1) < confidence.mean(axis=1)).all()
    fitted = torch.load(run_dir / "model.pt", weights_only=True)["method"]["temperatures"]
    assert (fitted > 1).all()

    anytime = read_table(run_dir / "anytime.csv")
    # Temperatures keep every argmax: each exit's top-1 is the source logits' own, counted here.
    source_top1 = 100 * (source.test.logits.argmax(-1) == source.test.labels).mean(axis=1)
    np.testing.assert_allclose(anytime["top1"], source_top1)
    np.testing.assert_array_equal(anytime["mflops"], FLOPS)
    budgeted = read_table(run_dir / "budgeted.csv")
    assert budgeted.groupby("policy").size().to_dict() == {"max_softmax": 39, "score": 39}
    assert set(budgeted["method"]) == {calibrator.name}
    assert {d.rule for d in read_decisions(run_dir)} == {"max_softmax", "score"}


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
    assert listed == [*TRAIN_METHODS.names(), *POSTHOC_METHODS.names()]
    assert calibrator.name in listed


def test_unknown_exit_rule_lists_every_rule() -> None:
    with pytest.raises(UnknownNameError, match="unknown exit rule 'nope'") as error:
        EXIT_RULES.get("nope")
    listed = str(error.value).rsplit(": ", 1)[1].split(", ")
    assert listed == EXIT_RULES.names()
    assert {"max_softmax", "score"} <= set(listed)


# --------------------------------------------------------------------------- exit rules


class HalfConfident(ExitRule):
    """A generic rule with one operating point: exit once the max softmax reaches 0.5."""

    name: ClassVar[str] = "test_half"
    generic: ClassVar[bool] = True
    draws_as: ClassVar[str] = "points"

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        thresholds = (*[0.5] * (outputs.num_exits - 1), -math.inf)
        return [ExitDecision(self.name, 1, math.nan, MAX_SOFTMAX, thresholds)]


def test_a_registered_generic_rule_is_fitted_for_every_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(EXIT_RULES._entries, HalfConfident.name, HalfConfident)
    outputs = fake_outputs()
    decisions = fit_decisions(TRAIN_METHODS.get("standard"), {}, outputs)
    assert [d.rule for d in decisions] == 39 * ["max_softmax"] + ["test_half"]
    ident = {"dataset": "synthetic", "backbone": "b", "method": "m", "variant": "", "seed": 0}
    _, budgeted = run_curves(outputs, decisions, ident)
    ours = budgeted[budgeted["policy"] == HalfConfident.name]
    # Max softmax and correctness written out here, not read from the code that fits the rule.
    confidence = np.exp(log_softmax(outputs.test.logits.astype(np.float64))).max(axis=-1)
    exits = np.where(confidence[0] >= 0.5, 0, np.where(confidence[1] >= 0.5, 1, 2))
    predicted = outputs.test.logits.argmax(-1)[exits, np.arange(N_TEST)]
    correct = predicted == outputs.test.labels
    assert len(ours) == 1 and np.isnan(ours["q"].iloc[0])
    assert ours["top1"].iloc[0] == pytest.approx(100 * correct.mean())
    assert ours["mflops"].iloc[0] == pytest.approx(FLOPS[exits].mean())


def test_score_rule_applies_only_to_runs_with_a_score() -> None:
    outputs = fake_outputs()
    assert not EXIT_RULES.get("score")().applies_to(outputs)
    outputs.val.scores["score"] = np.zeros((K, N_VAL))
    assert EXIT_RULES.get("score")().applies_to(outputs)
