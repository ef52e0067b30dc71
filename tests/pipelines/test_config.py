"""Study configs: schema errors name the key, registry errors list what exists."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from eebench.pipelines.config import ConfigError, RunSpec, check_study, expand_runs, resolve_run

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
