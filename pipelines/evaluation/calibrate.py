"""The calibrate stage: fit a post-hoc method on a trained run's val outputs, never test.

The post-hoc run gets its own run directory with the same files as a trained run
(`outputs.npz`, `exit_rules.json`, `anytime.csv`, `budgeted.csv`), `model.pt`, the
fitted method's state, and `fit.json`, what the fit chose (the method's `fit_report`).
Its outputs come from replaying the source run's saved exits through the method's
`exit_output`, the hook that real early exit runs too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eebench.methods import POSTHOC_METHODS, ExitOutput, PostHocMethod
from eebench.methods.base import MAX_SOFTMAX
from eebench.methods.inference import replay
from eebench.pipelines.evaluation.evaluate import run_costs, write_run_results
from eebench.pipelines.evaluation.outputs import RunOutputs, SplitOutputs, read_outputs
from eebench.pipelines.services.io import write_text, write_yaml
from eebench.pipelines.services.lock import run_lock
from eebench.pipelines.services.repro import record_environment
from eebench.pipelines.training import checkpoint as ckpt
from eebench.pipelines.workflow.fingerprint import recorded

log = logging.getLogger(__name__)

#: What the post-hoc method fitted and chose (`PostHocMethod.fit_report`), beside exit_rules.json.
FIT_FILE = "fit.json"


def _exit_arrays(exits: list[list[ExitOutput]], read: Any) -> np.ndarray:
    """K×N… array of one field of the replayed outputs ([exit][batch])."""
    return np.stack([torch.cat([read(o) for o in batches]).float().numpy() for batches in exits])


def apply_posthoc(method: PostHocMethod, split: SplitOutputs) -> SplitOutputs:
    """The method's predictions and scores on a saved split of its source run."""
    n = split.labels.shape[0]
    features = split.features or [np.zeros((n, 0), np.float32)] * split.num_exits
    batches = replay(
        [method], [torch.from_numpy(f) for f in features], torch.from_numpy(split.logits)
    )
    exits = [list(per_exit) for per_exit in zip(*batches, strict=True)]
    names = exits[0][0].scores.keys() - {MAX_SOFTMAX}
    scores = {name: _exit_arrays(exits, lambda out, name=name: out.scores[name]) for name in names}
    return SplitOutputs(_exit_arrays(exits, lambda out: out.logits), split.labels, scores)


def calibrate_run(run: dict[str, Any], run_dir: Path) -> None:
    """Fit the run's post-hoc method on its source run and write the post-hoc run's files."""
    with run_lock(run_dir, "calibrate"):
        _calibrate(run, run_dir)


def _calibrate(run: dict[str, Any], run_dir: Path) -> None:
    source = Path(run["source"])
    method_cls = POSTHOC_METHODS.get(run["method"])
    outputs = read_outputs(source, with_features="features" in method_cls.needs)
    write_yaml(run_dir / "config.yaml", run)
    method = method_cls(run["hparams"], outputs.num_exits, seed=run["seed"])
    log.info("fitting %s on the val outputs of %s", run["method"], source)
    method.fit(outputs)
    flops, score_flops = run_costs(method, outputs.flops)
    calibrated = RunOutputs(
        val=apply_posthoc(method, outputs.val),
        test=apply_posthoc(method, outputs.test),
        flops=flops,
        score_flops=score_flops,
    )
    ckpt.save_torch(run_dir / "model.pt", {"method": method.state_dict(), **recorded(run)})
    write_text(run_dir / FIT_FILE, json.dumps(method.fit_report(), indent=1) + "\n")
    write_run_results(run_dir, calibrated, method_cls, run)
    record_environment(run_dir, "calibrate", "cpu")
