"""`joint_bilevel` under the real Trainer and Engine (pipelines/training/train.py,
pipelines/training/engine.py): the φ optimizer's family and schedule, and the `frozen` variant
trained on a `standard` run.

Expected values are written out here (the optimizer classes and settings, the warm-up and
cosine formulas with math.cos), not taken from `make_optimizer`, `lr_at` or `cosine`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from eebench.methods.joint_bilevel import JointBilevel
from eebench.pipelines.training.train import Trainer, train_run
from tests.tiny_runs import tiny_run
from tests.tiny_runs import trained_weights as weights

#: 4 classes on 28×28 images: msdnet_fmnist trains one epoch of 4 batches in about a second.
TRAIN_SUBSET, BATCH = 64, 16
STEPS_PER_EPOCH = TRAIN_SUBSET // BATCH  # drop_last
PHI_LR, PHI_MIN_LR, PHI_WD = 3e-3, 2e-4, 5e-4  # not the defaults, so a default cannot pass


def make_run(method: str = "standard", **overrides: Any) -> dict[str, Any]:
    """A tiny synthetic run config (the pattern of tests/pipelines/training/test_train.py)."""
    hparams = {}
    if method == "joint_bilevel":
        hparams = JointBilevel.resolve_hparams(
            "synthetic",
            {
                "hidden": 16,
                "phi_interval": 1,
                "phi_lr": PHI_LR,
                "phi_min_lr": PHI_MIN_LR,
                "phi_weight_decay": PHI_WD,
                **overrides.pop("hparams", {}),
            },
        )
    return tiny_run(
        recipe={"epochs": 1, "batch_size": BATCH, **overrides.pop("recipe", {})},
        method=method,
        hparams=hparams,
        train_subset=TRAIN_SUBSET,
        checkpoint_every_steps=1000,
        validate_each_epoch=False,
        **overrides,
    )


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def trainer(tmp_path: Path, run: dict[str, Any], name: str = "run") -> Trainer:
    torch.set_num_threads(1)
    return Trainer(run, tmp_path / name, tmp_path / "splits")


# --------------------------------------------------------------------------- optimizer family


def gater_optimizer(built: Trainer) -> torch.optim.Optimizer:
    """The φ optimizer, after checking that it optimises exactly the gater's parameters."""
    slots = built.engine.slots
    assert set(slots) == {"backbone", "gater"}
    optimizer = slots["gater"].optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in params} == {id(p) for p in built.method.gater.parameters()}
    assert len(params) == len(list(built.method.gater.parameters()))
    backbone = {id(p) for p in built.method.backbone.parameters()}
    assert not backbone & {id(p) for p in params}
    return optimizer


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.9, False), (0.7, True)])
def test_phi_optimizer_is_sgd_with_the_recipes_momentum(
    tmp_path: Path, momentum: float, nesterov: bool
) -> None:
    run = make_run("joint_bilevel", recipe={"momentum": momentum, "nesterov": nesterov})
    built = trainer(tmp_path, run)
    optimizer = gater_optimizer(built)
    assert type(optimizer) is torch.optim.SGD
    for group in optimizer.param_groups:
        assert group["momentum"] == momentum and group["nesterov"] is nesterov
        assert group["weight_decay"] == PHI_WD and group["lr"] == PHI_LR
    backbone = built.engine.slots["backbone"].optimizer
    assert type(backbone) is torch.optim.SGD and backbone.param_groups[0]["lr"] == 0.1


def test_phi_optimizer_is_adamw_under_an_adamw_recipe(tmp_path: Path) -> None:
    recipe = {"optimizer": "adamw", "lr": 2e-3, "min_lr": 1e-6, "weight_decay": 0.05}
    built = trainer(tmp_path, make_run("joint_bilevel", recipe=recipe))
    optimizer = gater_optimizer(built)
    assert type(optimizer) is torch.optim.AdamW
    for group in optimizer.param_groups:
        assert group["weight_decay"] == PHI_WD and group["lr"] == PHI_LR
        assert "momentum" not in group
    backbone = built.engine.slots["backbone"].optimizer
    assert type(backbone) is torch.optim.AdamW
    assert backbone.param_groups[0]["weight_decay"] == 0.05


# --------------------------------------------------------------------------- schedules


def phi_lr_by_hand(step: int, total: int) -> float:
    """φ: cosine from phi_lr to phi_min_lr over every step of the run, no warm-up."""
    return PHI_MIN_LR + 0.5 * (PHI_LR - PHI_MIN_LR) * (1.0 + math.cos(math.pi * step / total))


def backbone_lr_by_hand(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """θ (the recipe): linear ramp 0 → lr over `warmup` steps, then cosine to min_lr."""
    if step < warmup:
        return lr * step / warmup
    return min_lr + 0.5 * (lr - min_lr) * (
        1.0 + math.cos(math.pi * (step - warmup) / (total - warmup))
    )


def record_lrs(built: Trainer) -> list[tuple[str, int, float]]:
    """(optimizer, global step, lr) at every optimizer step the training loop takes."""
    seen: list[tuple[str, int, float]] = []
    for name, slot in built.engine.slots.items():

        def hook(optimizer: torch.optim.Optimizer, *_: Any, name: str = name) -> None:
            lrs = {group["lr"] for group in optimizer.param_groups}
            assert len(lrs) == 1, f"{name}: param groups at different learning rates {lrs}"
            seen.append((name, built.engine.global_step, lrs.pop()))

        slot.optimizer.register_step_pre_hook(hook)
    return seen


def test_phi_and_backbone_learning_rates_at_every_step(tmp_path: Path) -> None:
    """Two epochs of 4 steps: θ warms up for one epoch then decays to min_lr; φ decays from
    phi_lr to phi_min_lr over all 8 steps from step 0 (its own schedule, no warm-up)."""
    epochs, lr, min_lr = 2, 0.05, 4e-3
    recipe = {"epochs": epochs, "lr": lr, "min_lr": min_lr, "warmup_epochs": 1.0}
    built = trainer(tmp_path, make_run("joint_bilevel", recipe=recipe))
    assert built.steps_per_epoch == STEPS_PER_EPOCH
    seen = record_lrs(built)
    built.fit()

    total, warmup = epochs * STEPS_PER_EPOCH, STEPS_PER_EPOCH
    # phi_interval 1: at every global step, θ then φ on each half-batch.
    assert [(name, step) for name, step, _ in seen] == [
        (name, step) for step in range(total) for name in ("backbone", "gater") * 2
    ]
    for name, step, got in seen:
        if name == "gater":
            expected = phi_lr_by_hand(step, total)
        else:
            expected = backbone_lr_by_hand(step, total, warmup, lr, min_lr)
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), (name, step)
    # The shape, in plain numbers: φ starts at phi_lr (no warm-up) and is halfway at step 4.
    phi = {step: got for name, step, got in seen if name == "gater"}
    backbone = {step: got for name, step, got in seen if name == "backbone"}
    assert phi[0] == PHI_LR and phi[4] == pytest.approx((PHI_LR + PHI_MIN_LR) / 2)
    assert backbone[0] == 0.0 and backbone[2] == pytest.approx(lr / 2)
    assert backbone[4] == pytest.approx(lr)  # the warm-up is over, the cosine starts at lr
    assert backbone[6] == pytest.approx((lr + min_lr) / 2)


def test_frozen_phi_follows_its_cosine_without_a_backbone_optimizer(tmp_path: Path) -> None:
    """Frozen: only φ has an optimizer; 2 φ steps per batch, at the hand-written cosine."""
    source = tmp_path / "standard"
    train_run(make_run(), source, tmp_path / "splits")
    recipe = {"epochs": 2, "warmup_epochs": 1.0}
    run = make_run(
        "joint_bilevel", recipe=recipe, hparams={"frozen_backbone": True}, init_from=str(source)
    )
    built = trainer(tmp_path, run, "frozen")
    assert set(built.engine.slots) == {"gater"}
    seen = record_lrs(built)
    built.fit()
    total = 2 * STEPS_PER_EPOCH
    assert [(name, step) for name, step, _ in seen] == [
        ("gater", step) for step in range(total) for _ in range(2)
    ]
    for _, step, got in seen:
        assert got == pytest.approx(phi_lr_by_hand(step, total), rel=1e-12), step


# --------------------------------------------------------------------------- frozen variant


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_frozen_variant_keeps_the_standard_backbone_and_trains_the_gater(
    tmp_path: Path, ema: bool
) -> None:
    """model.pt of the frozen run: the standard run's backbone bit for bit (weights and BN
    running stats), also under a recipe with an EMA of the backbone; a gater that learned."""
    splits = tmp_path / "splits"
    source = tmp_path / "standard"
    recipe = {"ema": ema, "ema_decay": 0.5}
    train_run(make_run(recipe=recipe), source, splits)
    standard = weights(source)
    run = make_run(
        "joint_bilevel",
        recipe=recipe,
        hparams={"frozen_backbone": True},
        init_from=str(source),
    )
    built = trainer(tmp_path, run, "frozen")
    gater_before = snapshot(built.method.gater)
    built.fit()
    frozen = weights(tmp_path / "frozen")

    backbone_keys = {k for k in frozen if k.startswith("backbone.")}
    assert backbone_keys == {k for k in standard if k.startswith("backbone.")}
    for key in backbone_keys:
        assert torch.equal(frozen[key], standard[key]), f"{key} changed"
    bn = [k for k in backbone_keys if k.endswith(("running_mean", "running_var"))]
    assert len(bn) >= 4, "the backbone has BatchNorm layers whose running stats are checked"
    tracked = [k for k in backbone_keys if k.endswith("num_batches_tracked")]
    assert tracked and all(torch.equal(frozen[k], standard[k]) for k in tracked)
    # The standard run did update its BN stats, so equality is not two untouched defaults.
    assert any(not torch.equal(standard[k], torch.zeros_like(standard[k])) for k in bn)
    # The live backbone too: with EMA, model.pt holds the EMA copy, which would hide a
    # frozen backbone that drifted during training.
    live = built.method.backbone.state_dict()
    for key in backbone_keys:
        assert torch.equal(live[key[len("backbone.") :]], standard[key]), f"live {key} changed"

    gater = {k[len("gater.") :]: v for k, v in frozen.items() if k.startswith("gater.")}
    assert gater.keys() == gater_before.keys()
    changed = [k for k in gater if not torch.equal(gater[k], gater_before[k])]
    assert changed, "the frozen run's gater never moved"
    weight_keys = [k for k in gater if k.endswith("weight")]
    assert set(weight_keys) <= set(changed), "every gater layer learns"
