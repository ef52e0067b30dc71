"""Training recipes: optimiser, schedule, batch size, epochs and augmentation.

The named recipes live in `eebench.recipes` (the top-level `recipes/` folder), as
backbones and methods live in theirs. A recipe is data; `lr_at` turns it into a learning
rate per iteration, a pure function of the global step, so a resumed run sets exactly the
same rates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eebench.pipelines.services.errors import number_hint
from eebench.pipelines.services.registry import Registry


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    min_lr: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_matrices_only: bool = False  # weight decay only on params with ndim > 1
    batch_size: int = 64
    eval_batch_size: int = 256
    epochs: int = 300
    schedule: str = "multistep"  # multistep | step | cosine
    milestones: tuple[float, ...] = (0.5, 0.75)  # multistep: fractions of the epochs
    step_epochs: int = 30  # step: decay every this many epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    augment: str = "standard"  # standard | timm | none
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    ema: bool = False
    ema_decay: float = 0.9999
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | off | bf16 | fp16
    # Training layout, CPU too: 1.15× on the Fashion-MNIST backbones, 0.95× on the CIFAR MSDNet.
    channels_last: bool = True
    compile: bool = False
    source: str = ""  # where the recipe comes from

    def __post_init__(self) -> None:
        checks = {
            "optimizer": (self.optimizer, {"sgd", "adamw"}),
            "schedule": (self.schedule, {"multistep", "step", "cosine"}),
            "augment": (self.augment, {"standard", "timm", "none"}),
            "amp": (self.amp, {"auto", "off", "bf16", "fp16"}),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(
                    f"recipe {self.name!r}: {key} must be one of {sorted(allowed)}, got {value!r}"
                )
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"recipe {self.name!r}: epochs must be >= 1 and batch_size >= 2")
        if self.lr <= 0 or self.min_lr < 0:
            raise ValueError(
                f"recipe {self.name!r}: lr must be > 0 and min_lr >= 0, got lr {self.lr:g}, "
                f"min_lr {self.min_lr:g}: set them in recipe_overrides"
            )

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Recipe:
        """A copy with some fields changed; unknown or mistyped fields are named in the error."""
        if not overrides:
            return self
        fields = {f.name: f for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in fields or key == "name":
                known = ", ".join(sorted(k for k in fields if k != "name"))
                raise ValueError(f"unknown recipe field {key!r}; known fields: {known}")
            default = getattr(self, key)
            if isinstance(default, tuple):
                value = tuple(value)
            elif (
                isinstance(default, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            if not isinstance(value, type(default)):
                raise ValueError(
                    f"recipe field {key!r} must be {type(default).__name__}, "
                    f"got {value!r}{number_hint(value)}"
                )
            clean[key] = value
        return dataclasses.replace(self, **clean)

    def summary(self) -> str:
        """One line: optimiser, schedule, length, augmentation and EMA (for `eebench list`)."""
        optimizer = f"{self.optimizer}{' nesterov' if self.nesterov else ''} lr {self.lr:g}"
        parts = [
            f"{optimizer} {self.schedule}, {self.epochs} epochs, batch {self.batch_size}",
            f"augment {self.augment}",
        ]
        extras = {"mixup": self.mixup, "cutmix": self.cutmix, "smoothing": self.label_smoothing}
        parts += [f"{name} {value:g}" for name, value in extras.items() if value]
        if self.ema:
            parts.append(f"EMA {self.ema_decay:g}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones)
        return data


def lr_at(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a global iteration (warm-up, then the recipe's schedule)."""
    total = recipe.epochs * steps_per_epoch
    warmup = round(recipe.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return recipe.lr * step / warmup
    if recipe.schedule == "cosine":
        return cosine(recipe.lr, recipe.min_lr, step - warmup, total - warmup)
    epoch = step // steps_per_epoch
    if recipe.schedule == "step":
        return recipe.lr * recipe.gamma ** (epoch // recipe.step_epochs)
    passed = sum(epoch >= math.floor(m * recipe.epochs) for m in recipe.milestones)
    return recipe.lr * recipe.gamma**passed


def cosine(start: float, end: float, step: int, total: int) -> float:
    """Cosine decay from `start` to `end` over `total` iterations."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


RECIPES: Registry[Recipe] = Registry("recipe")
