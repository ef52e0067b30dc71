"""The config hash: what can change a trained model is in it, where and how fast is not."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from eebench.pipelines.workflow.config import RunSpec, check_study, resolve_run
from eebench.pipelines.workflow.fingerprint import differences, fingerprint, hashed_config

STUDY = {
    "study": "s",
    "datasets": {"fashion_mnist": {"backbones": ["msdnet_fmnist"], "recipe": "fmnist"}},
    "runs": [{"method": "joint_bilevel", "variants": ["frozen"]}],
}
SPEC = RunSpec("fashion_mnist", "msdnet_fmnist", "joint_bilevel", "frozen", 0)


def run_of(study: dict[str, Any], root: str = "results/s") -> dict[str, Any]:
    return resolve_run(check_study(study), SPEC, results_root=root)


def test_same_run_same_hash_wherever_the_results_are() -> None:
    assert fingerprint(run_of(STUDY)) == fingerprint(run_of(STUDY, "/elsewhere/results/s"))
    upstream = hashed_config(run_of(STUDY))["init_from"]  # the frozen variant's backbone
    assert upstream == "runs/fashion_mnist/msdnet_fmnist/standard/seed0"


@pytest.mark.parametrize(
    ("key", "value"),
    [("device", "cpu"), ("num_workers", 4), ("checkpoint_every_steps", 7), ("data_root", "/d")],
)
def test_where_and_how_fast_do_not_change_the_hash(key: str, value: Any) -> None:
    changed = {**copy.deepcopy(STUDY), key: value}
    assert fingerprint(run_of(changed)) == fingerprint(run_of(STUDY))


@pytest.mark.parametrize(
    ("edit", "difference"),
    [
        (
            lambda s: s["datasets"]["fashion_mnist"].update(recipe_overrides={"lr": 0.05}),
            "recipe.lr: 0.1 -> 0.05",
        ),
        (lambda s: s["runs"][0].update(hparams={"lam": 1.0}), "hparams.lam: 2.0 -> 1.0"),
        (
            lambda s: s["datasets"]["fashion_mnist"].update(train_subset=100),
            "train_subset: None -> 100",
        ),
        (lambda s: s.update(split_seed=1), "split_seed: 0 -> 1"),
    ],
)
def test_what_changes_the_model_changes_the_hash_and_is_named(edit: Any, difference: str) -> None:
    changed = copy.deepcopy(STUDY)
    edit(changed)
    before, after = run_of(STUDY), run_of(changed)
    assert fingerprint(before) != fingerprint(after)
    assert differences(hashed_config(before), hashed_config(after)) == [difference]
