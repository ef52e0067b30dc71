"""Fake study results for the tables and figures tests: per-run CSVs and config.yaml files
with curves simple enough to check interpolations by hand, no training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from eebench.pipelines.evaluation.protocol import P_VALUES
from eebench.pipelines.services.io import write_csv, write_yaml
from eebench.pipelines.workflow.config import RunSpec, check_study, expand_runs, resolve_run

#: Cumulative MFLOPs per exit of the fake backbones.
FLOPS = {"msdnet_cifar": [10.0, 30.0, 60.0, 100.0, 137.0], "ranet_cifar": [15.0, 40.0, 80.0, 120.0]}
#: Top-1 shift of each variant (the λ/T sweep variants only appear in the sensitivity tests).
VARIANT_SHIFT = {
    "": 0.0,
    "confidence": 1.0,
    "margin+entropy": 2.0,
    "frozen": -1.0,
    "lam=0.5": -1.0,
    "lam=4": 1.5,
    "T=1": 0.5,
}


def fake_study(dataset: str = "cifar100") -> dict[str, Any]:
    """2 backbones; standard, joint_bilevel and frozen on both; two feature subsets on MSDNet."""
    return check_study(
        {
            "study": "fake",
            "seeds": [0, 1],
            "datasets": {
                dataset: {
                    "backbones": ["msdnet_cifar", "ranet_cifar"],
                    "recipe": "msdnet_cifar",
                    "recipe_overrides": {"epochs": 3},
                    "budgets_mflops": [5, 30, 50, 70, 90],
                    "train_subset": 8000,
                }
            },
            "runs": [
                {"method": "standard"},
                {"method": "joint_bilevel", "variants": ["", "frozen"]},
                {
                    "method": "joint_bilevel",
                    "variants": ["confidence", "margin+entropy"],
                    "backbones": ["msdnet_cifar"],
                },
            ],
        }
    )


def offset(spec: RunSpec) -> float:
    """Top-1 shift of a run: +1 per seed, +2 for joint_bilevel, plus its variant's shift."""
    return (
        spec.seed + (2.0 if spec.method == "joint_bilevel" else 0.0) + VARIANT_SHIFT[spec.variant]
    )


def budgeted_top1(mflops: float, spec: RunSpec) -> float:
    """The fake budgeted curve: cost 10 + 3p, top-1 50 + p/4 + offset, i.e. linear in cost."""
    return 50.0 + (mflops - 10.0) / 12.0 + offset(spec)


def _run_frames(spec: RunSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    flops = FLOPS[spec.backbone]
    ident = {"dataset": spec.dataset, "backbone": spec.backbone, "method": spec.method}
    anytime = pd.DataFrame(
        {
            **ident,
            "variant": spec.variant,
            "seed": spec.seed,
            "exit": np.arange(1, len(flops) + 1),
            "mflops": flops,
            "top1": [60.0 + 5 * k + offset(spec) for k in range(len(flops))],
        }
    )
    policies = ["max_softmax", "score"] if spec.method == "joint_bilevel" else ["max_softmax"]
    p = np.array(P_VALUES)
    cost = 10.0 + 3.0 * p
    blocks = [
        pd.DataFrame(
            {
                **ident,
                "variant": spec.variant,
                "policy": policy,
                "seed": spec.seed,
                "p": p,
                "q": p / 20,
                "mflops": cost,
                "top1": [budgeted_top1(c, spec) + (0.5 if policy == "score" else 0) for c in cost],
                "exit_fractions": ";".join(["0.25"] * 4),
            }
        )
        for policy in policies
    ]
    return anytime, pd.concat(blocks, ignore_index=True)


def write_fake_results(study: dict[str, Any], root: Path) -> Path:
    """Every run's anytime.csv, budgeted.csv and config.yaml under root/runs/…; returns root."""
    for spec in expand_runs(study):
        anytime, budgeted = _run_frames(spec)
        run_dir = root / spec.path
        write_csv(run_dir / "anytime.csv", anytime)
        write_csv(run_dir / "budgeted.csv", budgeted)
        write_yaml(run_dir / "config.yaml", resolve_run(study, spec, results_root=root))
    return root


@pytest.fixture(scope="session")
def make_study() -> Callable[..., dict[str, Any]]:
    return fake_study


@pytest.fixture(scope="session")
def make_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[dict[str, Any]], Path]:
    """Writes a study's fake runs under a fresh tmp results/<study> folder."""
    return lambda study: write_fake_results(study, tmp_path_factory.mktemp("results") / "fake")


@pytest.fixture
def study(make_study: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return make_study()


@pytest.fixture
def results_root(study: dict[str, Any], make_results: Callable[[dict[str, Any]], Path]) -> Path:
    return make_results(study)
