"""Study configs: schema errors name the key, registry errors list what exists."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from eebench.pipelines.workflow.config import (
    ConfigError,
    RunSpec,
    check_study,
    expand_runs,
    resolve_run,
)

STUDY: dict[str, Any] = {
    "study": "unit",
    "datasets": {
        "fashion_mnist": {
            "backbones": ["msdnet_fmnist", "ranet_fmnist"],
            "recipe": "fmnist",
            "recipe_overrides": {"epochs": 2},
            "train_subset": 1000,
        }
    },
    "runs": [
        {"method": "standard"},
        {"method": "joint_bilevel", "variants": ["", "frozen"], "backbones": ["msdnet_fmnist"]},
    ],
}


def study(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(STUDY)
    data.update(changes)
    return data


def test_matrix_and_resolved_run() -> None:
    checked = check_study(study(seeds=[0, 1]))
    specs = expand_runs(checked)
    assert len(specs) == 2 * (2 + 2)
    frozen = RunSpec("fashion_mnist", "msdnet_fmnist", "joint_bilevel", "frozen", 1)
    assert frozen in specs
    run = resolve_run(checked, frozen, results_root="results/unit")
    assert run["init_from"] == "results/unit/runs/fashion_mnist/msdnet_fmnist/standard/seed1"
    assert run["hparams"]["frozen_backbone"] is True
    assert run["recipe"]["epochs"] == 2 and run["recipe"]["name"] == "fmnist"
    assert RunSpec.from_path(frozen.path) == frozen


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"seeds": "0"}, "seeds"),
        ({"runs": [{"method": "standrd"}]}, "registered methods: "),
        ({"runs": [{"method": "standard", "hparams": {"lam": 1.0}}]}, "hyperparameter 'lam'"),
        ({"runs": [{"method": "joint_bilevel", "hparams": {"lam": "big"}}]}, "'lam' must be float"),
        ({"runs": [{"method": "joint_bilevel", "variants": ["frozn"]}]}, "unknown variant 'frozn'"),
        ({"runs": [{"method": "standard", "recipe": "nope"}]}, "registered recipes: "),
        ({"runs": [{"method": "standard", "recipe_overrides": {"epoch": 3}}]}, "'epoch'"),
        ({"datasets": {"mnist": {"backbones": ["msdnet_fmnist"]}}}, "fashion_mnist"),
        ({"datasets": {"fashion_mnist": {"backbones": ["msdnet"]}}}, "msdnet_fmnist"),
    ],
)
def test_bad_config_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        check_study(study(**change))


def test_recipe_variant_trains_the_default_variant_with_another_recipe() -> None:
    study = check_study(
        {
            "study": "s",
            "datasets": {"cifar100": {"backbones": ["msdnet_cifar"], "recipe": "paper_cifar"}},
            "runs": [{"method": "standard", "variants": ["", "recipe=paper_cifar_plain"]}],
        }
    )
    default, control = (resolve_run(study, spec) for spec in expand_runs(study))
    assert (default["recipe"]["name"], control["recipe"]["name"]) == (
        "paper_cifar",
        "paper_cifar_plain",
    )
    assert control["hparams"] == default["hparams"] and control["variant"] == (
        "recipe=paper_cifar_plain"
    )
    study["runs"][0]["variants"] = ["recipe=nope"]
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        resolve_run(study, expand_runs(study)[0])


def test_paper_study_compares_like_with_like() -> None:
    """Every method drawn in a figure of a dataset has that dataset's one recipe; the
    controls train both methods with the plain recipe; frozen reuses its recipe's backbone."""
    from pathlib import Path

    from eebench.methods import method_class
    from eebench.pipelines.workflow.config import load_study

    study = load_study(Path(__file__).resolve().parents[3] / "config" / "paper.yaml")
    runs = {spec: resolve_run(study, spec) for spec in expand_runs(study)}
    for dataset in study["datasets"]:
        drawn = {
            run["recipe"]["name"]
            for spec, run in runs.items()
            if spec.dataset == dataset
            and method_class(spec.method).display_of(spec.variant).figures
        }
        assert drawn == {study["datasets"][dataset]["recipe"]}, (dataset, drawn)
    controls = {(s.dataset, s.method) for s in runs if s.variant == "recipe=paper_cifar_plain"}
    for dataset in ("cifar10", "cifar100"):
        assert {(dataset, "standard"), (dataset, "joint_bilevel")} <= controls
    for spec, run in runs.items():
        if run["init_from"]:
            upstream = RunSpec.from_path(run["init_from"])
            mine, theirs = dict(run["recipe"]), dict(runs[upstream]["recipe"])
            # A method may train its own share of the backbone's epochs (JEI-DNN: 10 of 300).
            assert mine.pop("epochs") <= theirs.pop("epochs") and mine == theirs, spec


def test_paper_recipes_are_appendix_b() -> None:
    """Addad et al. App. B, read off the paper's text; the plain control drops only the
    augmentation, label smoothing and EMA."""
    from eebench.recipes import RECIPES

    cifar, plain, imagenet = (
        RECIPES.get(name) for name in ("paper_cifar", "paper_cifar_plain", "paper_imagenet")
    )
    appendix_b = {
        "augment": "timm",
        "mixup": 0.8,
        "cutmix": 1.0,
        "label_smoothing": 0.1,
        "ema": True,
        "ema_decay": 0.9999,
    }
    for recipe in (cifar, imagenet):
        assert {key: getattr(recipe, key) for key in appendix_b} == appendix_b, recipe.name
    cifar_optim = ("sgd", 0.1, 1e-3, "cosine", 64, 300, 1e-4, 0.9)
    fields = ("optimizer", "lr", "min_lr", "schedule", "batch_size", "epochs")
    fields += ("weight_decay", "momentum")
    assert tuple(getattr(cifar, f) for f in fields) == cifar_optim
    assert tuple(getattr(plain, f) for f in fields) == cifar_optim
    assert (plain.augment, plain.mixup, plain.cutmix, plain.label_smoothing, plain.ema) == (
        "standard",
        0.0,
        0.0,
        0.0,
        False,
    )
    assert (imagenet.optimizer, imagenet.lr, imagenet.min_lr, imagenet.weight_decay) == (
        "adamw",
        1e-3,
        1e-6,
        0.05,
    )
    assert (imagenet.batch_size, imagenet.warmup_epochs) == (1024, 20)
