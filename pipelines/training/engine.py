"""The training engine: the `StepEngine` services that a method's training step uses.

The `Engine` owns everything about how one step runs: every optimizer with its
per-iteration learning-rate schedule, the model's memory format and compilation, AMP
(autocast and the fp16 gradient scaler), the finite-loss check, the EMA of the backbone
and the mixup/cutmix/label smoothing of the batches (within each half for a method whose
step holds one half of the batch out, `TrainMethod.held_out_half`). It hands the state of
all of them to the training loop's checkpoints (pipelines/training/train.py), so a method never
writes checkpoint code. Under data parallelism it also averages each step's gradients over
the ranks (pipelines/training/distributed.py), so a method never writes distributed code either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eebench.methods.base import TrainMethod
from eebench.pipelines.training.distributed import World
from eebench.pipelines.training.recipes import Recipe, cosine, lr_at

#: What the mixup of a recipe does to a batch: (x, labels) -> (x, hard or soft targets).
BatchMix = Callable[[torch.Tensor, torch.Tensor], Any]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: the run stops, the last good checkpoint stays."""


@dataclass
class OptimizerSlot:
    """An optimizer and the pure function that gives its learning rate at a global step."""

    name: str
    optimizer: torch.optim.Optimizer
    lr_fn: Callable[[int], float]

    def set_lr(self, step: int) -> float:
        lr = self.lr_fn(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr


#: Optimizer families a method may ask `add_optimizer` for (None: the recipe's own).
FAMILIES = ("sgd", "adamw", "adam")


def make_optimizer(
    recipe: Recipe,
    params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    split_decay: bool,
    family: str | None = None,
) -> torch.optim.Optimizer:
    """SGD (the recipe's momentum and Nesterov), AdamW, or Adam with L2 decay: the recipe's
    family unless `family` names another."""
    if split_decay:
        groups = [
            {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": params, "weight_decay": weight_decay}]
    family = family or recipe.optimizer
    if family == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if family == "adam":
        return torch.optim.Adam(groups, lr=lr, eps=1e-8)
    if family == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=1e-8)
    raise ValueError(f"unknown optimizer family {family!r}; choose one of {', '.join(FAMILIES)}")


class Engine:
    """Implements the StepEngine protocol of methods/base.py for one run.

    Device, steps per epoch and number of classes come from `method.ctx`, the facts the
    method was built with, so the engine and the method cannot disagree about them.
    `global_step` counts the steps taken; the training loop advances it after each one.
    `world` is the run's data-parallel ranks (one process by default).
    """

    def __init__(
        self,
        method: TrainMethod,
        recipe: Recipe,
        *,
        method_name: str,
        ckpt_dir: Path,
        world: World | None = None,
    ) -> None:
        self.method, self.recipe = method, recipe
        self.world = world or World(device=method.ctx.device)
        self.device = method.ctx.device
        self.steps_per_epoch = method.ctx.steps_per_epoch
        self.method_name, self.ckpt_dir = method_name, ckpt_dir  # for error messages
        _prepare_model(method, recipe)
        self.slots: dict[str, OptimizerSlot] = {}
        params = method.backbone_parameters()
        if params:
            self._add_backbone_optimizer(params)
        method.configure(self)
        self.amp_dtype = _amp_dtype(recipe.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = _build_ema(recipe, method.backbone) if "backbone" in self.slots else None
        self.mixup = _build_mixup(recipe, method.ctx.num_classes)
        self.mix_halves = method.held_out_half and (recipe.mixup > 0 or recipe.cutmix > 0)
        if self.mix_halves and recipe.batch_size % 4:
            raise ValueError(
                f"{method_name}: batch_size {recipe.batch_size} must be a multiple of 4: Mixup/"
                "CutMix pairs the samples of each half-batch, which must be even"
            )
        self.global_step = 0

    def _add_backbone_optimizer(self, params: list[nn.Parameter]) -> None:
        """The recipe's own optimizer and schedule; absent when the backbone is frozen."""
        recipe, steps_per_epoch = self.recipe, self.steps_per_epoch
        optimizer = make_optimizer(
            recipe, params, recipe.lr, recipe.weight_decay, recipe.decay_matrices_only
        )
        self.slots["backbone"] = OptimizerSlot(
            "backbone", optimizer, lambda step: lr_at(recipe, step, steps_per_epoch)
        )

    # ------------------------------------------------------------------ StepEngine

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def backbone_optimizer(self) -> OptimizerSlot:
        if "backbone" not in self.slots:
            raise RuntimeError(f"{self.method_name}: the backbone is frozen, it has no optimizer")
        return self.slots["backbone"]

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
    ) -> OptimizerSlot:
        total = self.recipe.epochs * self.steps_per_epoch
        warmup = round(warmup_epochs * self.steps_per_epoch)

        def lr_fn(step: int) -> float:
            if step < warmup:
                return lr * step / warmup
            return cosine(lr, min_lr, step - warmup, total - warmup)

        optimizer = make_optimizer(self.recipe, list(params), lr, weight_decay, False, family)
        slot = OptimizerSlot(name, optimizer, schedule or lr_fn)
        self.slots[name] = slot
        return slot

    def optimize(self, loss: torch.Tensor, handle: OptimizerSlot | None = None) -> None:
        slot = handle or self.backbone_optimizer()
        self.method.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        params = [p for group in slot.optimizer.param_groups for p in group["params"]]
        self._check_finite(self.world.average_gradients(params, loss.detach()), slot)
        self.scaler.step(slot.optimizer)
        self.scaler.update()
        if slot.name == "backbone" and self.ema is not None:
            self.ema.update(self.method.backbone)

    def _check_finite(self, loss: torch.Tensor, slot: OptimizerSlot) -> None:
        """Stop before the step when the loss (the ranks' mean: all stop together) is NaN or
        infinite."""
        if torch.isfinite(loss):
            return
        epoch = self.global_step // self.steps_per_epoch
        raise NonFiniteLossError(
            f"loss is {float(loss):.4g} at epoch {epoch}, "
            f"global step {self.global_step} ({slot.name} update). Lower the learning rate "
            "(or check the data), then train the run again from the start with "
            f"`eebench train ... --restart` (or delete {self.ckpt_dir}): resuming "
            "would start from the checkpoints that led here"
        )

    # ------------------------------------------------------------------ the loop's side

    def prepare_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Set every learning rate for the current global step and return the batch as the
        method's step sees it: in the model's memory format, with mixed or smoothed targets."""
        for slot in self.slots.values():
            slot.set_lr(self.global_step)
        if self.recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.mixup is None:
            return x, y
        if self.mix_halves:  # the method's held-out half never sees a training-half image
            mixed = [self.mixup(*half) for half in zip(x.chunk(2), y.chunk(2), strict=True)]
            return torch.cat([m[0] for m in mixed]), torch.cat([m[1] for m in mixed])
        return self.mixup(x, y)

    def current_lr(self) -> float:
        """Learning rate of the first optimizer (the backbone's unless it is frozen), logged."""
        first = next(iter(self.slots.values()))
        return float(first.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries the engine owns: optimizers, AMP scaler, EMA."""
        return {
            "optimizers": {name: slot.optimizer.state_dict() for name, slot in self.slots.items()},
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the entries of `state_dict` from a checkpoint (its other keys are ignored)."""
        for name, slot in self.slots.items():
            slot.optimizer.load_state_dict(state["optimizers"][name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])


def _prepare_model(method: TrainMethod, recipe: Recipe) -> None:
    """Memory format and compilation, before any optimizer or EMA copy sees the parameters."""
    if recipe.channels_last:
        method.to(memory_format=torch.channels_last)
    if recipe.compile:
        if torch.are_deterministic_algorithms_enabled():  # the compiler's switch too
            torch.use_deterministic_algorithms(True)
        method.backbone.compile()


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the recipe's `amp`; AMP only runs on CUDA."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def _build_ema(recipe: Recipe, backbone: nn.Module) -> Any:
    """timm's EMA copy of the backbone when the recipe asks for one (updated by `optimize`
    after each backbone-optimizer step, so none is built without that optimizer: it would
    keep the initial weights and hide any part of the backbone a method trains with an
    optimizer of its own)."""
    if not recipe.ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(backbone, decay=recipe.ema_decay)


def _build_mixup(recipe: Recipe, num_classes: int) -> BatchMix | None:
    """timm's Mixup/CutMix (which also smooths labels), else plain label smoothing, else none."""
    if recipe.mixup > 0 or recipe.cutmix > 0:
        from timm.data import Mixup

        return Mixup(
            mixup_alpha=recipe.mixup,
            cutmix_alpha=recipe.cutmix,
            label_smoothing=recipe.label_smoothing,
            num_classes=num_classes,
        )
    if recipe.label_smoothing > 0:
        return _label_smoothing(recipe.label_smoothing, num_classes)
    return None


def _label_smoothing(smoothing: float, num_classes: int) -> BatchMix:
    def smooth(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = torch.full((len(y), num_classes), smoothing / num_classes, device=y.device)
        target.scatter_(1, y[:, None], 1.0 - smoothing + smoothing / num_classes)
        return x, target

    return smooth
