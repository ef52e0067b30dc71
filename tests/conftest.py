"""Shared test settings (the reproducible CPU mode, set before torch loads: one thread, so
that two pytest workers share 2 cores, and the same numbers on any x86-64) and the
extension kit: a tiny study run through the real stages (train, evaluate, calibrate,
tables, figures), with which the extension tests check a throw-away method end to end."""

# ruff: noqa: E402  (the mode's environment must be set before torch is imported)
from __future__ import annotations

from eebench.pipelines.services.repro import apply_env, configure_torch

apply_env()

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch

from eebench.methods import method_kind
from eebench.pipelines.analysis.figures import build_figures
from eebench.pipelines.analysis.tables import build_tables, read_table
from eebench.pipelines.evaluation.calibrate import calibrate_run
from eebench.pipelines.evaluation.evaluate import evaluate_run
from eebench.pipelines.training.train import train_run
from eebench.pipelines.workflow.config import check_study, expand_runs, resolve_run

torch.set_num_threads(1)
configure_torch("cpu", threads=1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Decompressed data copies go to the session's temporary folder, not the user's cache."""
    os.environ["EEBENCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


#: A 4-class synthetic dataset small enough to train msdnet_fmnist for one epoch in seconds.
SYNTHETIC = {"num_classes": 4, "image_size": 28, "n_train": 256, "n_val": 96, "n_test": 128}


def tiny_study_data(runs: list[dict[str, Any]], name: str = "extension") -> dict[str, Any]:
    """One backbone, one seed, one epoch on the synthetic dataset, as a study file holds it."""
    return {
        "study": name,
        "device": "cpu",
        "features_subset": 64,
        "checkpoint_every_steps": 1000,
        "datasets": {
            "synthetic": {
                "backbones": ["msdnet_fmnist"],
                "recipe": "fmnist",
                "recipe_overrides": {"epochs": 1, "batch_size": 32, "eval_batch_size": 64},
                "budget_fractions": [0.5, 0.8],
                "stands_in_for": ["cifar100", "imagenet"],  # fills Fig. 4 and 5 too
                "synthetic": dict(SYNTHETIC),
            }
        },
        "runs": runs,
    }


def tiny_study(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`tiny_study_data`, checked and with its defaults filled in."""
    return check_study(tiny_study_data(runs))


def run_study(study: dict[str, Any], root: Path) -> Path:
    """Every run of the study through its stage, then the tables and figures; returns root."""
    run_stages(study, root)
    build_tables(study, root)
    build_figures(study, root)
    return root


def run_stages(study: dict[str, Any], root: Path) -> Path:
    """Every run of the study through its stage (train and evaluate, or calibrate)."""
    torch.set_num_threads(1)
    splits = root / "splits"
    for spec in expand_runs(study):
        run = resolve_run(study, spec, results_root=root)
        run_dir = root / spec.path
        if method_kind(spec.method) == "train":
            train_run(run, run_dir, splits)
            evaluate_run(run, run_dir, splits)
        else:
            calibrate_run(run, run_dir)
    return root


def rows_of(root: Path, table: str, method: str) -> pd.DataFrame:
    """A study table's rows of one method."""
    frame = read_table(root / table)
    return frame[frame["method"] == method]


@pytest.fixture(scope="session")
def extension_kit() -> SimpleNamespace:
    """tiny_study(runs), run_study(study, root), run_stages(study, root) and
    rows_of(root, table, method)."""
    return SimpleNamespace(
        tiny_study=tiny_study, run_study=run_study, run_stages=run_stages, rows_of=rows_of
    )
