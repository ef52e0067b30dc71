"""The method interface: three kinds of methods, their registries and hyperparameter checks.

- `TrainMethod` (train-time, DomainBed-style): its training step, and its inference
  (`exit_output`: what exit k predicts and scores from the backbone head's output, and
  `extra_mflops`: what that costs beyond the backbone).
- `PostHocMethod` (OpenOOD-style postprocessor): fitted on a trained run's val outputs
  (logits, features, the heads' classifiers; never test), then the same `exit_output`
  hook on top of the trained run's exits.
- `ExitRule`: fitted on val for each operating point (a target proportion, a budget or
  a single point) into `ExitDecision`s, one threshold per exit on a named score.

Every method declares how it is shown (`Display`: label, colour, marker, the figures it
appears in, the exit rule of its main curve), its variants, and optionally Table-like
rows (`TableRows`) and hyperparameter sweeps (`Sweep`); the pipelines read these and
never name a method. Adding a method = one new file in `methods/` that subclasses one of
these and registers itself; `methods/__init__.py` imports every module of the folder.
"""

from __future__ import annotations

import copy
import inspect
import sys
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eebench.pipelines.evaluation.outputs import (
    MAX_SOFTMAX,
    OWN_SCORE,
    ExitDecision,
    RunOutputs,
    SplitOutputs,
)
from eebench.pipelines.services.errors import number_hint
from eebench.pipelines.services.registry import Registry


class HyperparameterError(ValueError):
    """A hyperparameter that the method does not know, or of the wrong type."""


class MethodContractError(TypeError):
    """A method's code returned what its kind's interface does not allow: the message names
    the method's file and the contract, so that the pipeline is not blamed."""


#: Method files of `methods/` that could not be imported ('methods/x.py' -> the error), so
#: that a broken file stops only the studies that use it, and its error is shown there.
BROKEN_FILES: dict[str, str] = {}


def source_file(owner: Any) -> str:
    """'methods/<name>.py' of a method class or instance (the full path outside `methods/`)."""
    cls = owner if isinstance(owner, type) else type(owner)
    path = inspect.getsourcefile(sys.modules[cls.__module__]) or cls.__module__
    return f"methods/{path.rsplit('/', 1)[-1]}" if cls.__module__.startswith(__package__) else path


def check_returned(value: Any, expected: type, owner: Any, contract: str) -> Any:
    """`value` when it is an `expected`, else a MethodContractError naming the file."""
    if not isinstance(value, expected):
        cls = owner if isinstance(owner, type) else type(owner)
        raise MethodContractError(
            f"{source_file(owner)}: {cls.__name__}.{contract} must return "
            f"{expected.__name__}, got {type(value).__name__}"
        )
    return value


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_type(method: str, key: str, default: Any, value: Any) -> None:
    """The default's type is the declared type; ints are accepted where floats are."""
    if default is None or value is None:
        return
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float)
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise HyperparameterError(
            f"{method}: hyperparameter {key!r} must be {_type_name(default)} "
            f"(default {default!r}), got {_type_name(value)} {value!r}{number_hint(value)}"
        )


# --------------------------------------------------------------------------- display


#: The paper figures that compare train-time methods (anytime, budgeted, ImageNet).
TRAIN_FIGURES: tuple[str, ...] = ("fig2_anytime", "fig3_budgeted", "fig5_imagenet")
#: The paper figure of post-hoc methods.
POSTHOC_FIGURES: tuple[str, ...] = ("fig4_posthoc",)
FALLBACK_COLORS = ("#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
FALLBACK_MARKERS = ("P", "<", ">", "8", "H", "1")


@dataclass(frozen=True)
class Display:
    """How a method (or one of its variants) is shown in figures and tables.

    `figures` names the registered figures it appears in (pipelines/figures); `main_rule`
    is the exit rule of its main budgeted curve (post-hoc comparisons, paper overlay);
    `rules` limits its budgeted curves to these exit rules (empty: every rule fitted), for
    a variant that equals another under some rule by construction.
    """

    label: str
    color: str
    marker: str
    figures: tuple[str, ...] = ()
    main_rule: str = MAX_SOFTMAX
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableRows:
    """Variants of a method that form the rows of a registered table (e.g. Table 1).

    Rows are the default variant and every variant that changes only `hparam`, labelled by
    that hyperparameter's value ('+'-joined for lists, in `order`), on backbones of `families`.
    """

    table: str
    hparam: str
    families: tuple[str, ...]
    order: tuple[str, ...] = ()


@dataclass(frozen=True)
class Sweep:
    """A hyperparameter whose single-hyperparameter variants form a sensitivity curve."""

    hparam: str
    symbol: str
    xlabel: str
    log: bool = False


def fallback_display(key: str) -> Display:
    """A stable colour and marker from the name, for methods and variants that declare none."""
    pick = zlib.crc32(key.encode())
    return Display(key, FALLBACK_COLORS[pick % 6], FALLBACK_MARKERS[(pick // 6) % 6])


RECIPE_VARIANT = "recipe="


class HasHparams:
    """Mixin: defaults, per-family overrides, named variants and the display of each."""

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, Any]] = {}
    # Per dataset family ("cifar", "imagenet", "fmnist", "synthetic") overrides.
    hparams_by_family: ClassVar[dict[str, dict[str, Any]]] = {}
    # Named variants: each is a dict with optional keys "hparams" (overrides),
    # "recipe" (recipe name), "activation", "init_from" (method[-variant] whose
    # trained backbone is reused), "display" (a dict of Display fields).
    variants: ClassVar[dict[str, dict[str, Any]]] = {}
    # The "init_from" of every variant that names none (e.g. a method that only trains on
    # top of `standard`'s backbone); a variant's own "init_from" wins, None included.
    init_from: ClassVar[str | None] = None
    display: ClassVar[Display | None] = None
    # Where a method that declares no display appears (set by each kind of method).
    default_figures: ClassVar[tuple[str, ...]] = ()
    default_main_rule: ClassVar[str] = MAX_SOFTMAX
    table_rows: ClassVar[tuple[TableRows, ...]] = ()
    sweeps: ClassVar[tuple[Sweep, ...]] = ()
    # Bump when a change to the method's file changes its numbers: runs trained with the
    # old code then no longer pass as current (pipelines/workflow/fingerprint.py).
    code_version: ClassVar[str] = ""

    @classmethod
    def resolve_hparams(
        cls, family: str, overrides: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Defaults, then family defaults, then user overrides, each checked by name and type."""
        resolved = copy.deepcopy(cls.hparams)
        for source in (cls.hparams_by_family.get(family, {}), overrides or {}):
            for key, value in source.items():
                if key not in cls.hparams:
                    known = ", ".join(sorted(cls.hparams)) or "(none)"
                    raise HyperparameterError(
                        f"{cls.name}: unknown hyperparameter {key!r}; known: {known}"
                    )
                _check_type(cls.name, key, cls.hparams[key], value)
                resolved[key] = copy.deepcopy(value)
        return resolved

    @classmethod
    def train_epochs(cls, hparams: Mapping[str, Any], recipe_epochs: int) -> int:
        """Epochs a run of the method trains (its resolved recipe's `epochs`): the recipe's,
        unless the method trains for its own share of them (e.g. parts added to a backbone
        that another run trained for the recipe's epochs)."""
        return recipe_epochs

    @classmethod
    def init_source(cls, variant: str | None) -> str | None:
        """The method[-variant] whose trained backbone the variant starts from, or None."""
        return cls.variant(variant).get("init_from", cls.init_from)

    @classmethod
    def variant(cls, name: str | None) -> dict[str, Any]:
        """The variant's settings; '' or None is the method's default variant.

        Every method also has the variants `recipe=<recipe name>`: the default variant
        trained with another recipe, the controls that separate a recipe from a method.
        """
        if not name:
            return {}
        if name.startswith(RECIPE_VARIANT) and name not in cls.variants:
            return {"recipe": name.removeprefix(RECIPE_VARIANT)}
        if name not in cls.variants:
            known = ", ".join(sorted(cls.variants)) or "(none)"
            raise HyperparameterError(
                f"{cls.name}: unknown variant {name!r}; known: {known}, and "
                f"{RECIPE_VARIANT}<recipe name> for every method"
            )
        return copy.deepcopy(cls.variants[name])

    @classmethod
    def display_of(cls, variant: str = "") -> Display:
        """The method's display, or its variant's: declared fields over the method's, else a
        fallback label `Method [variant]` in a colour of its own, shown in no paper figure."""
        fallback = replace(
            fallback_display(cls.name),
            figures=cls.default_figures,
            main_rule=cls.default_main_rule,
        )
        base = cls.display or fallback
        if not variant:
            return base
        # A variant is shown where its method is (but a recipe control, a row of a table or
        # a point of a sweep: only in the tables or that table's or sweep's figure), under a
        # label that names it and in a colour and marker of its own, unless it declares them.
        own = fallback_display(f"{cls.name}-{variant}")
        figures = base.figures if cls.shown_with_method(variant) else ()
        named = replace(base, label=f"{base.label} [{variant}]", color=own.color, marker=own.marker)
        return replace(named, **{"figures": figures, **cls.variant(variant).get("display", {})})

    @classmethod
    def shown_with_method(cls, variant: str) -> bool:
        """Whether a variant is drawn in its method's figures by default: not a recipe control
        (figures compare methods under one recipe), nor a variant of a table row or sweep."""
        if variant.startswith(RECIPE_VARIANT) and variant not in cls.variants:
            return False
        own_figures = {rows.hparam for rows in cls.table_rows} | {s.hparam for s in cls.sweeps}
        return cls.swept_hparam(variant) not in own_figures

    @classmethod
    def swept_hparam(cls, variant: str) -> str | None:
        """The one hyperparameter a variant changes when it changes nothing else, else None."""
        definition = cls.variant(variant)
        changed = list(definition.get("hparams", {}))
        if variant and set(definition) - {"display"} == {"hparams"} and len(changed) == 1:
            return changed[0]
        return None


# --------------------------------------------------------------------------- inference


@dataclass
class ExitOutput:
    """What one exit produces for a batch: prediction logits (B×C), the features its head
    read (B×d) and exit scores by name (B each; larger = more ready to exit)."""

    logits: torch.Tensor
    features: torch.Tensor
    scores: dict[str, torch.Tensor] = field(default_factory=dict)


#: Per-sample state a method carries from one exit to the next (batch-first tensors, so
#: that real early exit can drop the rows of samples that left).
Memory = dict[str, torch.Tensor]


class ExitHook(Protocol):
    """The inference hook of train-time and post-hoc methods alike."""

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput: ...


class InferenceCosts:
    """Mixin: the method's extra per-exit MFLOPs and the scores it provides."""

    #: Names of the exit scores `exit_output` adds (beyond the generic max softmax).
    score_names: ClassVar[tuple[str, ...]] = ()
    #: Method-specific exit rules (registered names) fitted for this method's runs.
    exit_rules: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def exit_rules_of(cls, hparams: Mapping[str, Any]) -> tuple[str, ...]:
        """The method's own exit rules for a run with these hparams: a variant that lacks
        a rule's score (e.g. a control without gates) drops the rule here."""
        return cls.exit_rules

    def extra_mflops(self) -> dict[str, np.ndarray]:
        """Per-exit (not cumulative) MFLOPs beyond the backbone, by what incurs them:
        "predict" (every prediction) or a score name (only when an exit rule reads it).
        Counted with fvcore (`eebench.backbones.flops.module_mflops`); none by default."""
        return {}

    def exit_output(self, k: int, head: ExitOutput, memory: Memory) -> ExitOutput:
        """What exit k predicts and scores, from the head's output. Default: the head's."""
        return head


# --------------------------------------------------------------------------- train-time


class OptimizerHandle(Protocol):
    """What the engine gives back for an optimizer it owns (state saved in checkpoints)."""

    optimizer: torch.optim.Optimizer


class StepEngine(Protocol):
    """Services of the training loop that a method's training step uses.

    The engine owns every optimizer, its per-iteration schedule, the AMP scaler,
    gradient checks and EMA, and saves all of them in checkpoints, so a method
    never writes its own checkpoint code.
    """

    device: torch.device

    def autocast(self) -> AbstractContextManager[None]: ...

    def backbone_optimizer(self) -> OptimizerHandle: ...

    def add_optimizer(
        self,
        name: str,
        params: Iterator[nn.Parameter] | list[nn.Parameter],
        *,
        lr: float,
        min_lr: float,
        weight_decay: float,
        warmup_epochs: float = 0.0,
        family: str | None = None,
        schedule: Callable[[int], float] | None = None,
    ) -> OptimizerHandle:
        """A new optimizer with its own cosine schedule: of the recipe's family, or of
        `family` ("sgd", "adamw", "adam": Adam with L2 decay). `schedule` (global step ->
        learning rate) replaces the cosine for a method whose original schedule differs; it
        must be a pure function of the step and the method's state_dict (exact resume)."""
        ...

    def optimize(self, loss: torch.Tensor, handle: OptimizerHandle | None = None) -> None:
        """zero_grad, backward (scaled under fp16), finite check, step.

        `handle` defaults to the backbone optimizer. Stops the run with a clear
        message naming the step when the loss is NaN or infinite.
        """
        ...


@dataclass
class TrainContext:
    """Facts about the run that a method needs to build itself."""

    num_classes: int
    exit_mflops: np.ndarray  # cumulative MFLOPs per exit of the backbone, (K,)
    family: str
    steps_per_epoch: int
    epochs: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def num_exits(self) -> int:
        return len(self.exit_mflops)

    @property
    def normalized_costs(self) -> torch.Tensor:
        """ĉ_k = C_k / C_K, as a float32 tensor on the run's device."""
        costs = torch.as_tensor(self.exit_mflops / self.exit_mflops[-1], dtype=torch.float32)
        return costs.to(self.device)


@dataclass
class StepOutput:
    """What a training step reports: the loss for the logs and logits for train accuracy.

    Each epoch row of train_log.csv holds the epoch's mean of every `metrics` value and the
    epoch's total of every `counts` value (events such as optimizer steps, whose per-epoch
    number reads better than a per-step mean); the two must not share a key.
    """

    loss: float
    logits: list[torch.Tensor] | None = None
    targets: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


class TrainMethod(InferenceCosts, HasHparams, nn.Module):
    """A training algorithm for a multi-exit backbone, and its inference.

    The method is an nn.Module so that its own trainable parts (e.g. a gater)
    move with `.to(device)` and are saved in checkpoints by the engine.
    """

    default_figures: ClassVar[tuple[str, ...]] = TRAIN_FIGURES
    #: Whether `end_epoch` reads the val outputs: the training loop then validates after
    #: every epoch, whatever the study's `validate_each_epoch` says.
    needs_val_each_epoch: ClassVar[bool] = False
    #: Whether the step splits each batch into a training half and a held-out half (the
    #: first and second `chunk(2)`): the engine then applies Mixup/CutMix within each half,
    #: so that no held-out image is mixed with a training one (timm's batch mode mixes
    #: sample i with sample B−1−i, which would pair every image with one of the other half).
    held_out_half: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, hparams: dict[str, Any], ctx: TrainContext) -> None:
        nn.Module.__init__(self)
        self.backbone = backbone
        self.hp = hparams
        self.ctx = ctx

    def configure(self, engine: StepEngine) -> None:
        """Called once after the engine is built: create extra optimizers here."""

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters the engine's backbone optimizer updates (all of them by default)."""
        return list(self.backbone.parameters())

    def training_step(
        self, x: torch.Tensor, target: torch.Tensor, step: int, engine: StepEngine
    ) -> StepOutput:
        raise NotImplementedError

    def end_epoch(self, epoch: int, val: SplitOutputs | None) -> None:
        """After epoch `epoch` (0-based), its validation and best-epoch bookkeeping, before its
        checkpoint: `val` holds the method's outputs on the val split (None when the epoch
        was not validated). What this changes must live in the method's state_dict (buffers,
        modules), so that a resumed run goes on with it. Nothing by default."""

    def epoch_warnings(self, row: dict[str, float], last_epoch: bool) -> list[str]:
        """Warnings for the run log about a finished epoch's train_log.csv row (e.g. a
        degenerate training state only the method can recognise); none by default."""
        return []


def per_sample_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE per sample for hard labels (B,) or soft targets (B, C), e.g. Mixup/CutMix."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target, reduction="none")
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Labels for accuracy: the argmax of soft targets, or the labels themselves."""
    return target if target.dim() == 1 else target.argmax(dim=-1)


# --------------------------------------------------------------------------- post-hoc


class PostHocMethod(InferenceCosts, HasHparams, nn.Module):
    """Fitted on the val outputs (never test) of a trained run; then, exit by exit, turns
    that run's exit outputs into its own (`exit_output`), in evaluation and deployment.

    Fitted values are stored as buffers (`register_buffer`), so that `state_dict()` is
    what the calibrate stage saves and `load_fitted` restores.
    """

    # Which extras of RunOutputs `fit` reads: "features" (train/val/test), "classifiers".
    needs: ClassVar[frozenset[str]] = frozenset()
    default_figures: ClassVar[tuple[str, ...]] = POSTHOC_FIGURES
    default_main_rule: ClassVar[str] = OWN_SCORE

    def __init__(self, hparams: dict[str, Any], num_exits: int, seed: int = 0) -> None:
        nn.Module.__init__(self)
        self.hp = hparams
        self.num_exits = num_exits
        self.seed = seed

    def fit(self, outputs: RunOutputs) -> None:
        raise NotImplementedError

    def fit_report(self) -> dict[str, Any]:
        """What `fit` fitted and chose, in JSON types: the calibrate stage writes it as the
        run's `fit.json` (beside `exit_rules.json`). Nothing by default."""
        return {}

    def load_fitted(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `fit` stored (buffers are created, since their shapes come from data)."""
        for name, tensor in state.items():
            self.register_buffer(name, tensor.clone())


# --------------------------------------------------------------------------- exit rules


class ExitRule(HasHparams):
    """Turns a run's val outputs into exit decisions, one per operating point.

    `score` is the score it thresholds: MAX_SOFTMAX, the method's own score, or a score a
    method names. `generic` rules are fitted for every run that has their score; other
    rules only for methods that list them in `exit_rules`. `draws_as` tells figures to
    draw its points as a line ("curve") or as markers ("points").
    """

    score: ClassVar[str] = MAX_SOFTMAX
    generic: ClassVar[bool] = False
    draws_as: ClassVar[str] = "curve"
    linestyle: ClassVar[str] = "-"
    legend_suffix: ClassVar[str] = ""

    def __init__(self, method_hparams: Mapping[str, Any] | None = None) -> None:
        self.method_hp = dict(method_hparams or {})

    def applies_to(self, outputs: RunOutputs) -> bool:
        return self.score == MAX_SOFTMAX or self.score in outputs.val.scores

    def fit(self, outputs: RunOutputs) -> list[ExitDecision]:
        """Decisions fitted on `outputs.val` only (test is never read)."""
        raise NotImplementedError

    def compute_score(self, logits: torch.Tensor) -> torch.Tensor:
        """The rule's own score of one exit's predictions (B×C logits -> B, larger = more
        ready to exit), for a rule whose score no method stores (e.g. low entropy).
        Every exit of every run then carries it: evaluation, calibration and real early
        exit compute it beside the max softmax, and it is saved with the run's outputs."""
        raise NotImplementedError

    @classmethod
    def computes_score(cls) -> bool:
        return cls.compute_score is not ExitRule.compute_score


def computed_scores(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """The scores of one exit that registered rules compute themselves (B each)."""
    scores = {}
    for name in EXIT_RULES.names():
        rule = EXIT_RULES.get(name)
        if rule.computes_score():
            score = rule().compute_score(logits)
            check_returned(score, torch.Tensor, rule, "compute_score")
            if score.shape != logits.shape[:1]:
                raise MethodContractError(
                    f"{source_file(rule)}: {rule.__name__}.compute_score must return one score "
                    f"per sample (shape {tuple(logits.shape[:1])}), got {tuple(score.shape)}"
                )
            scores[rule.score] = score
    return scores


TRAIN_METHODS: Registry[type[TrainMethod]] = Registry("train method")
POSTHOC_METHODS: Registry[type[PostHocMethod]] = Registry("post-hoc method")
EXIT_RULES: Registry[type[ExitRule]] = Registry("exit rule")


def _registering(registry: Registry[Any]) -> Callable[[Any], Any]:
    def decorator(cls: Any) -> Any:
        return registry.register(cls.name)(cls)

    return decorator


register_train_method = _registering(TRAIN_METHODS)
register_posthoc_method = _registering(POSTHOC_METHODS)
register_exit_rule = _registering(EXIT_RULES)


def method_kind(name: str) -> str:
    """'train', 'posthoc', or an error listing every registered method."""
    if name in TRAIN_METHODS:
        return "train"
    if name in POSTHOC_METHODS:
        return "posthoc"
    known = ", ".join(TRAIN_METHODS.names() + POSTHOC_METHODS.names())
    broken = "".join(f"; not loaded: {path} ({error})" for path, error in BROKEN_FILES.items())
    raise HyperparameterError(f"unknown method {name!r}; registered methods: {known}{broken}")


def method_class(name: str) -> type[TrainMethod] | type[PostHocMethod]:
    """The registered class of a train-time or post-hoc method."""
    registry = TRAIN_METHODS if method_kind(name) == "train" else POSTHOC_METHODS
    return registry.get(name)


def rules_for(
    method: type[InferenceCosts], outputs: RunOutputs, hparams: Mapping[str, Any]
) -> list[str]:
    """The exit rules fitted for a run: every generic rule whose score it has, then its own."""
    generic = [
        name
        for name in EXIT_RULES.names()
        if EXIT_RULES.get(name).generic and EXIT_RULES.get(name)().applies_to(outputs)
    ]
    own = method.exit_rules_of(hparams)
    return [*generic, *(r for r in own if r not in generic)]
