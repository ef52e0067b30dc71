"""The evaluate stage: a trained run's logits, features and exit scores, then its curves.

`outputs.npz` holds the protocol.md keys (val/test logits and labels, cumulative
`flops`, and `val_scores`/`test_scores` when the method has its own exit score);
`features.npz` holds per-exit pre-classifier features of train (a subset), val
and test for post-hoc methods. The run's anytime and budgeted rows are written
beside them, for every exit policy that applies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from eebench.backbones import MultiExitNet, fold_batchnorm
from eebench.methods import EXIT_POLICIES
from eebench.methods.base import TrainMethod
from eebench.pipelines import protocol
from eebench.pipelines.io import write_csv, write_npz

log = logging.getLogger(__name__)

RUN_KEYS = ("dataset", "backbone", "method", "variant", "seed")


@dataclass
class Collected:
    """Per-exit outputs of one split, as numpy arrays (K first)."""

    logits: np.ndarray
    labels: np.ndarray
    features: list[np.ndarray] = field(default_factory=list)
    scores: np.ndarray | None = None


def inference_copy(backbone: MultiExitNet) -> MultiExitNet:
    """BN folded into the convs, channels_last: eval-mode logits up to float rounding, and
    1.5–1.8× faster (benchmarks/backbone_speed.py, `fast`). Not for a compiled backbone."""
    return fold_batchnorm(backbone).to(memory_format=torch.channels_last)


@torch.inference_mode()
def collect(
    method: TrainMethod,
    batches: Any,
    device: torch.device,
    *,
    with_features: bool = False,
    max_samples: int | None = None,
    fast: bool = False,
) -> Collected:
    """Run the backbone in eval mode over `batches` and stack what each exit produced.

    `fast` runs an `inference_copy` of the backbone on channels_last inputs.
    """
    method.eval()
    backbone = inference_copy(method.backbone) if fast else method.backbone
    logits: list[list[torch.Tensor]] = []
    features: list[list[torch.Tensor]] = []
    scores: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    seen = 0
    for x, y in batches:
        x = x.to(device, memory_format=torch.channels_last if fast else torch.preserve_format)
        exit_logits, exit_features = backbone(x, return_features=True)
        logits.append([z.float().cpu() for z in exit_logits])
        if with_features:
            features.append([f.float().cpu() for f in exit_features])
        batch_scores = method.exit_scores(exit_logits, exit_features)
        if batch_scores is not None:
            scores.append(batch_scores.float().cpu())
        labels.append(y.cpu())
        seen += len(y)
        if max_samples is not None and seen >= max_samples:
            break
    n = min(seen, max_samples) if max_samples is not None else seen
    stacked = np.stack([torch.cat(per_exit)[:n].numpy() for per_exit in zip(*logits, strict=True)])
    return Collected(
        logits=stacked.astype(np.float32),
        labels=torch.cat(labels)[:n].numpy().astype(np.int64),
        features=[torch.cat(f)[:n].numpy() for f in zip(*features, strict=True)],
        scores=torch.cat(scores, dim=1)[:, :n].numpy().astype(np.float32) if scores else None,
    )


def exit_top1(collected: Collected) -> list[float]:
    """Top-1 (percent) of every exit."""
    predictions = collected.logits.argmax(axis=-1)
    return [float(100.0 * (p == collected.labels).mean()) for p in predictions]


def outputs_arrays(val: Collected, test: Collected, flops: np.ndarray) -> dict[str, np.ndarray]:
    """The protocol.md keys of a run's logits file."""
    arrays = {
        "val_logits": val.logits,
        "val_labels": val.labels,
        "test_logits": test.logits,
        "test_labels": test.labels,
        "flops": np.asarray(flops, dtype=np.float64),
    }
    if val.scores is not None and test.scores is not None:
        arrays["val_scores"] = val.scores
        arrays["test_scores"] = test.scores
    return arrays


def features_arrays(splits: dict[str, Collected]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for split, collected in splits.items():
        arrays[f"{split}_labels"] = collected.labels
        for k, feats in enumerate(collected.features):
            arrays[f"{split}_features_{k}"] = feats.astype(np.float32)
    return arrays


def run_curves(
    outputs: dict[str, np.ndarray], run: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Anytime rows and budgeted rows (one block per applicable exit policy) of one run."""
    ident = {key: run[key] for key in RUN_KEYS}
    anytime = protocol.anytime_curve(
        outputs["test_logits"], outputs["test_labels"], outputs["flops"]
    )
    anytime = anytime.assign(**ident)[[*RUN_KEYS, "exit", "mflops", "top1"]]
    blocks = []
    for name in EXIT_POLICIES.names():
        policy = EXIT_POLICIES.get(name)()
        if not policy.applies_to(set(outputs)):
            continue
        curve = protocol.budgeted_curve(
            policy.scores(outputs["val_logits"], outputs.get("val_scores")),
            policy.scores(outputs["test_logits"], outputs.get("test_scores")),
            outputs["test_logits"].argmax(-1) == outputs["test_labels"],
            outputs["flops"],
        )
        blocks.append(curve.assign(policy=name, **ident))
    columns = [*RUN_KEYS[:4], "policy", "seed", "p", "q", "mflops", "top1", "exit_fractions"]
    budgeted = pd.concat(blocks, ignore_index=True)[columns]
    return anytime, budgeted


def write_run_results(run_dir: Path, outputs: dict[str, np.ndarray], run: dict[str, Any]) -> None:
    """outputs.npz, anytime.csv, budgeted.csv of one run, each written atomically."""
    anytime, budgeted = run_curves(outputs, run)
    write_npz(run_dir / "outputs.npz", **outputs)
    write_csv(run_dir / "anytime.csv", anytime)
    write_csv(run_dir / "budgeted.csv", budgeted)
    summary = ", ".join(f"{row.mflops:.2f}M: {row.top1:.2f}%" for row in anytime.itertuples())
    log.info("anytime top-1 per exit (test): %s", summary)


def evaluate_run(run_dir: Path, split_dir: Path, *, with_features: bool = True) -> None:
    """Write a finished run's outputs.npz (+ features.npz), anytime.csv and budgeted.csv."""
    from eebench.pipelines.config import load_run_config
    from eebench.pipelines.runs import build_method, make_loaders, resolve_device, trained_state

    run = load_run_config(run_dir / "config.yaml")
    state = trained_state(run_dir)
    device = resolve_device(run["device"])
    loaders = make_loaders(run, split_dir, device)
    info = loaders.info
    method = build_method(run, info.num_classes, info.family, len(loaders.train), device)
    method.load_state_dict(state)
    splits = {
        split: collect(method, loader.iterate(0), device, with_features=with_features, fast=True)
        for split, loader in (("val", loaders.val), ("test", loaders.test))
    }
    outputs = outputs_arrays(splits["val"], splits["test"], method.ctx.exit_mflops)
    if with_features:
        splits["train"] = collect(
            method,
            loaders.train_eval.iterate(0),
            device,
            with_features=True,
            max_samples=run.get("features_subset") or None,
            fast=True,
        )
        write_npz(run_dir / "features.npz", **features_arrays(splits))
    write_run_results(run_dir, outputs, run)
