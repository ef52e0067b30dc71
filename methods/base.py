"""Base classes of the three kinds of methods, their registries and hyperparameter checks.

- `TrainMethod` (train-time, DomainBed-style): one class per algorithm with its
  training step and a dict of default hyperparameters (per dataset family).
- `PostHocCalibrator` (OpenOOD-style postprocessor): fitted on the val outputs
  (logits, features) of a trained run; returns calibrated log-probabilities and
  per-exit exit scores.
- `ExitPolicy`: turns a run's outputs into the per-exit scores that the budgeted
  threshold protocol ranks (`max_softmax`, `score`).

Adding a method = one new file in `methods/` that subclasses one of these and
registers itself; `methods/__init__.py` imports every module of the folder.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eebench.pipelines.registry import Registry


class HyperparameterError(ValueError):
    """A hyperparameter that the method does not know, or of the wrong type."""


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
            f"(default {default!r}), got {_type_name(value)} {value!r}"
        )


class HasHparams:
    """Mixin: a class-level table of default hyperparameters, resolved per family."""

    name: ClassVar[str] = ""
    hparams: ClassVar[dict[str, Any]] = {}
    # Per dataset family ("cifar", "imagenet", "fmnist", "synthetic") overrides.
    hparams_by_family: ClassVar[dict[str, dict[str, Any]]] = {}
    # Named variants: each is a dict with optional keys "hparams" (overrides),
    # "recipe" (recipe name), "activation", "init_from" (method[-variant] whose
    # trained backbone is reused).
    variants: ClassVar[dict[str, dict[str, Any]]] = {}

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
    def variant(cls, name: str | None) -> dict[str, Any]:
        """The variant's settings; '' or None is the method's default variant."""
        if not name:
            return {}
        if name not in cls.variants:
            known = ", ".join(sorted(cls.variants)) or "(none)"
            raise HyperparameterError(f"{cls.name}: unknown variant {name!r}; known: {known}")
        return copy.deepcopy(cls.variants[name])


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
    ) -> OptimizerHandle:
        """A new optimizer of the recipe's family with its own cosine schedule."""
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
    exit_mflops: np.ndarray  # cumulative MFLOPs per exit, (K,)
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
    """What a training step reports: the loss for the logs and logits for train accuracy."""

    loss: float
    logits: list[torch.Tensor] | None = None
    targets: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class TrainMethod(HasHparams, nn.Module):
    """A training algorithm for a multi-exit backbone.

    The method is an nn.Module so that its own trainable parts (e.g. a gater)
    move with `.to(device)` and are saved in checkpoints by the engine.
    """

    # True when `exit_scores` gives the method's own per-exit exit scores.
    has_exit_score: ClassVar[bool] = False

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

    def exit_scores(
        self, logits: list[torch.Tensor], features: list[torch.Tensor]
    ) -> torch.Tensor | None:
        """Per-exit scores (K×B) for the `score` exit policy, or None."""
        return None


def per_sample_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE per sample for hard labels (B,) or soft targets (B, C), e.g. Mixup/CutMix."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target, reduction="none")
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)


def hard_labels(target: torch.Tensor) -> torch.Tensor:
    """Labels for accuracy: the argmax of soft targets, or the labels themselves."""
    return target if target.dim() == 1 else target.argmax(dim=-1)


# --------------------------------------------------------------------------- post-hoc


@dataclass
class RunOutputs:
    """A trained run's saved outputs (protocol.md keys), plus optional features."""

    val_logits: np.ndarray  # K×N×C
    val_labels: np.ndarray
    test_logits: np.ndarray
    test_labels: np.ndarray
    flops: np.ndarray  # K, cumulative MFLOPs
    val_scores: np.ndarray | None = None  # K×N
    test_scores: np.ndarray | None = None
    features: dict[str, list[np.ndarray]] | None = None  # split -> per-exit N×d_k
    train_labels: np.ndarray | None = None
    classifiers: list[tuple[np.ndarray, np.ndarray]] | None = None  # per-exit (W, b)

    @property
    def num_exits(self) -> int:
        return self.val_logits.shape[0]


@dataclass
class Calibrated:
    """What a calibrator returns for one split: log-probabilities and exit scores."""

    log_probs: np.ndarray  # K×N×C
    scores: np.ndarray  # K×N


class PostHocCalibrator(HasHparams):
    """Fitted on val outputs (never test) of a trained run; transforms any split."""

    # Which extras of RunOutputs the calibrator needs: "features", "classifiers".
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, hparams: dict[str, Any], seed: int = 0) -> None:
        self.hp = hparams
        self.seed = seed

    def fit(self, outputs: RunOutputs) -> None:
        raise NotImplementedError

    def transform(self, outputs: RunOutputs, split: str) -> Calibrated:
        raise NotImplementedError


# --------------------------------------------------------------------------- exit policies


class ExitPolicy:
    """Turns a run's outputs into per-exit scores (K×N) for the threshold protocol."""

    name: ClassVar[str] = ""

    def scores(self, logits: np.ndarray, provided: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def applies_to(self, outputs_keys: set[str]) -> bool:
        """Whether this policy can run on a file with these keys."""
        return True


TRAIN_METHODS: Registry[type[TrainMethod]] = Registry("train method")
CALIBRATORS: Registry[type[PostHocCalibrator]] = Registry("post-hoc calibrator")
EXIT_POLICIES: Registry[type[ExitPolicy]] = Registry("exit policy", "exit policies")


def _registering(registry: Registry[Any]) -> Callable[[Any], Any]:
    def decorator(cls: Any) -> Any:
        return registry.register(cls.name)(cls)

    return decorator


register_train_method = _registering(TRAIN_METHODS)
register_calibrator = _registering(CALIBRATORS)
register_exit_policy = _registering(EXIT_POLICIES)


def method_kind(name: str) -> str:
    """'train', 'posthoc', or an error listing every registered method."""
    if name in TRAIN_METHODS:
        return "train"
    if name in CALIBRATORS:
        return "posthoc"
    known = ", ".join(TRAIN_METHODS.names() + CALIBRATORS.names())
    raise HyperparameterError(f"unknown method {name!r}; registered methods: {known}")
