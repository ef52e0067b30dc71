"""Building the pieces of a run from its resolved config (shared by train and evaluate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from eebench.backbones import create_model
from eebench.backbones.flops import exit_mflops
from eebench.methods import TRAIN_METHODS, method_kind
from eebench.methods.base import TrainContext, TrainMethod
from eebench.pipelines.data.loaders import build_loaders
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.training.recipes import Recipe
from eebench.pipelines.workflow.fingerprint import check_recorded


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA GPU is visible; use device: auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_recipe(run: dict[str, Any]) -> Recipe:
    data = dict(run["recipe"])
    data["milestones"] = tuple(data["milestones"])
    return Recipe(**data)


def make_loaders(run: dict[str, Any], split_dir: Path, device: torch.device) -> Any:
    recipe = run_recipe(run)
    return build_loaders(
        run["dataset"],
        data_root=run["data_root"],
        split_dir=split_dir,
        split_seed=run["split_seed"],
        seed=run["seed"],
        batch_size=recipe.batch_size,
        eval_batch_size=recipe.eval_batch_size,
        train_subset=run.get("train_subset"),
        augment=recipe.augment,
        device=device,
        num_workers=run.get("num_workers", 0),
        synthetic_kwargs=run.get("synthetic"),
    )


def build_method(
    run: dict[str, Any],
    num_classes: int,
    family: str,
    steps_per_epoch: int,
    device: torch.device,
) -> TrainMethod:
    """Backbone (optionally initialised from another run) wrapped in the run's method."""
    model = create_model(run["backbone"], num_classes, activation=run.get("activation", "relu"))
    if run.get("init_from"):
        load_backbone(model, Path(run["init_from"]))
    ctx = TrainContext(
        num_classes=num_classes,
        exit_mflops=exit_mflops(run["backbone"], num_classes),
        family=family,
        steps_per_epoch=steps_per_epoch,
        epochs=run_recipe(run).epochs,
        device=device,
    )
    return TRAIN_METHODS.get(run["method"])(model, run["hparams"], ctx).to(device)


#: What makes a run's model.pt, by method kind: (when it is missing, when it is stale).
REMEDIES = {
    "train": (
        "train the run {run_dir} first",
        "train the run again (`eebench train ... --restart`)",
    ),
    "posthoc": ("run `eebench calibrate` on {run_dir}", "fit it again (`eebench calibrate`)"),
}


def trained_state(run_dir: Path, run: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The method state of a finished run (trained, or fitted post-hoc); given `run`, the
    model must have been made under that config."""
    missing, stale = REMEDIES[method_kind(run["method"]) if run else "train"]
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {missing.format(run_dir=run_dir)}")
    payload = ckpt.load_torch(path, ("method",))
    if run is not None:
        check_recorded(path, payload, run, stale)
    return payload["method"]


def load_backbone(model: torch.nn.Module, run_dir: Path) -> None:
    """Load the backbone weights of another finished run (e.g. the frozen variant's source)."""
    state = trained_state(run_dir)
    prefix = "backbone."
    model.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
