"""The calibrate stage: fit a post-hoc method on a trained run's val outputs, never test.

The calibrated run gets its own run directory with the same files as a trained
run: `outputs.npz` (its log-probabilities stand in for logits; its exit scores
are `val_scores`/`test_scores`), `anytime.csv` and `budgeted.csv`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from eebench.methods import CALIBRATORS
from eebench.methods.base import RunOutputs
from eebench.pipelines.evaluate import write_run_results
from eebench.pipelines.io import write_yaml

log = logging.getLogger(__name__)


def load_run_outputs(run_dir: Path, with_features: bool) -> RunOutputs:
    """A trained run's outputs.npz (and features.npz when asked), checked for completeness."""
    path = run_dir / "outputs.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `eebench evaluate` on {run_dir} first")
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    outputs = RunOutputs(
        val_logits=arrays["val_logits"],
        val_labels=arrays["val_labels"],
        test_logits=arrays["test_logits"],
        test_labels=arrays["test_labels"],
        flops=arrays["flops"],
        val_scores=arrays.get("val_scores"),
        test_scores=arrays.get("test_scores"),
    )
    if with_features:
        outputs.features, outputs.train_labels = _load_features(run_dir / "features.npz")
    return outputs


def _load_features(path: Path) -> tuple[dict[str, list[np.ndarray]], np.ndarray | None]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: evaluate the source run without --no-features"
        )
    with np.load(path) as data:
        features: dict[str, list[np.ndarray]] = {}
        for split in ("train", "val", "test"):
            keys = sorted(
                (k for k in data.files if k.startswith(f"{split}_features_")),
                key=lambda k: int(k.rsplit("_", 1)[1]),
            )
            features[split] = [data[k] for k in keys]
        train_labels = data["train_labels"] if "train_labels" in data.files else None
    return features, train_labels


def calibrate_run(run: dict[str, Any], run_dir: Path) -> None:
    """Fit the run's calibrator on its source run and write the calibrated outputs."""
    source = Path(run["source"])
    calibrator_cls = CALIBRATORS.get(run["method"])
    outputs = load_run_outputs(source, with_features="features" in calibrator_cls.needs)
    write_yaml(run_dir / "config.yaml", run)
    calibrator = calibrator_cls(run["hparams"], seed=run["seed"])
    log.info("fitting %s on the val outputs of %s", run["method"], source)
    calibrator.fit(outputs)
    val, test = calibrator.transform(outputs, "val"), calibrator.transform(outputs, "test")
    calibrated = {
        "val_logits": val.log_probs.astype(np.float32),
        "val_labels": outputs.val_labels,
        "test_logits": test.log_probs.astype(np.float32),
        "test_labels": outputs.test_labels,
        "flops": outputs.flops,
        "val_scores": val.scores.astype(np.float32),
        "test_scores": test.scores.astype(np.float32),
    }
    write_run_results(run_dir, calibrated, run)
