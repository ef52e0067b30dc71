"""The named training recipes, registered by name as backbones and methods are.

A config names one per dataset (`datasets: {name: {recipe: ...}}`) and a method variant
may name its own; `eebench list` shows them all. Add a recipe here with `_add(Recipe(...))`
and a `source` that says where its numbers come from.
"""

from __future__ import annotations

from eebench.pipelines.training.recipes import RECIPES, Recipe

__all__ = ["RECIPES", "Recipe"]


def _add(recipe: Recipe) -> None:
    RECIPES.register(recipe.name)(recipe)


_add(
    Recipe(
        name="msdnet_cifar",
        source="MSDNet/RANet reference code: SGD 0.1, ×0.1 at 50% and 75% of 300 epochs",
    )
)
_add(
    Recipe(
        name="msdnet_imagenet",
        batch_size=256,
        epochs=90,
        schedule="step",
        step_epochs=30,
        source="MSDNet reference code, ImageNet: batch 256, 90 epochs, ×0.1 every 30",
    )
)
# Addad et al., Appendix B. Its augmentation is the released code's timm pipeline (crop +
# flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25; the colour jitter it names is
# skipped by timm when RandAugment is on), Mixup 0.8 / CutMix 1.0 with label smoothing 0.1,
# and EMA 0.9999 of the weights, which are the ones validated, saved and evaluated.
APPENDIX_B = {
    "augment": "timm",
    "mixup": 0.8,
    "cutmix": 1.0,
    "label_smoothing": 0.1,
    "ema": True,
    "ema_decay": 0.9999,
}
PAPER_CIFAR = {
    "schedule": "cosine",
    "min_lr": 1e-3,
    # The paper names SGD with momentum 0.9; the authors' code runs SGD as Nesterov (θ and φ).
    "nesterov": True,
}
_add(
    Recipe(
        name="paper_cifar",
        **PAPER_CIFAR,
        **APPENDIX_B,
        source="Addad et al. App. B, CIFAR: SGD 0.1 → 1e-3 cosine (Nesterov, as the authors' "
        "code), batch 64, 300 epochs, wd 1e-4; RandAugment m9, erasing 0.25, Mixup 0.8, "
        "CutMix 1.0, label smoothing 0.1, EMA 0.9999",
    )
)
_add(
    Recipe(
        name="paper_cifar_plain",
        **PAPER_CIFAR,
        source="control: paper_cifar's optimiser and schedule with crop + flip only (no "
        "RandAugment, erasing, Mixup/CutMix, label smoothing or EMA)",
    )
)
_add(
    Recipe(
        name="paper_imagenet",
        optimizer="adamw",
        lr=1e-3,
        min_lr=1e-6,
        weight_decay=0.05,
        batch_size=1024,
        epochs=90,
        schedule="cosine",
        warmup_epochs=20,
        **APPENDIX_B,
        source="Addad et al. App. B, ImageNet: AdamW 1e-3 → 1e-6, batch 1024, wd 0.05, "
        "20 warm-up epochs (epochs not given by the paper: 90 as the baselines); "
        "RandAugment m9, erasing 0.25, Mixup 0.8, CutMix 1.0, label smoothing 0.1, EMA 0.9999",
    )
)
_add(
    Recipe(
        name="released_code",
        optimizer="adamw",
        lr=4e-3,
        min_lr=1e-6,
        weight_decay=1e-4,
        decay_matrices_only=True,
        schedule="cosine",
        warmup_epochs=20,
        augment="timm",
        mixup=0.8,
        cutmix=1.0,
        label_smoothing=0.1,
        source="gphi_MSDNet code defaults: AdamW 4e-3, 20 warm-up epochs, RandAugment m9, "
        "Mixup 0.8 / CutMix 1.0, random erasing 0.25, label smoothing 0.1",
    )
)
_add(
    Recipe(
        name="fmnist",
        schedule="cosine",
        min_lr=1e-3,
        epochs=30,
        source="small Fashion-MNIST recipe of this suite: SGD 0.1 → 1e-3 cosine, batch 64",
    )
)
