"""The evaluate stage: a trained run's outputs, its fitted exit rules, then its curves.

Every exit's prediction, features and exit scores come from the method's own inference
(`methods/inference.py`, exit by exit), on val and test and, for post-hoc methods, a
train subset. The run's exit rules are fitted on val and saved (`exit_rules.json`);
its anytime rows and one block of budgeted rows per exit rule are written beside the
outputs (`pipelines/evaluation/outputs.py` is the only reader and writer of those files).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from eebench.backbones import MultiExitNet, fold_batchnorm
from eebench.methods import EXIT_RULES, method_class
from eebench.methods.base import (
    MAX_SOFTMAX,
    ExitRule,
    InferenceCosts,
    MethodContractError,
    TrainMethod,
    rules_for,
    source_file,
)
from eebench.methods.inference import ExitByExit
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.outputs import (
    ExitDecision,
    RunOutputs,
    SplitOutputs,
    write_decisions,
    write_outputs,
)
from eebench.pipelines.services.io import write_csv
from eebench.pipelines.services.lock import run_lock
from eebench.pipelines.services.repro import record_environment

log = logging.getLogger(__name__)

RUN_KEYS = ("dataset", "backbone", "method", "variant", "seed")
BUDGETED_COLUMNS = [*RUN_KEYS[:4], "policy", "seed", "p", "q", "mflops", "top1", "exit_fractions"]


def inference_copy(backbone: MultiExitNet) -> MultiExitNet:
    """BN folded into the convs, channels_last: eval-mode logits up to float rounding, and
    1.5–1.8× faster (benchmarks/backbone_speed.py, `fast`). Not for a compiled backbone."""
    return fold_batchnorm(backbone).to(memory_format=torch.channels_last)


def method_runner(method: TrainMethod, fast: bool = False) -> ExitByExit:
    """The method's exit-by-exit inference, on a fast copy of its backbone if asked."""
    backbone = inference_copy(method.backbone) if fast else method.backbone
    return ExitByExit(backbone, [method])


def _per_exit(per_batch: list[list[torch.Tensor]], n: int) -> list[np.ndarray]:
    """[batch][exit] tensors -> per exit, the float32 array of the first n samples."""
    return [torch.cat(per_exit)[:n].float().numpy() for per_exit in zip(*per_batch, strict=True)]


@torch.inference_mode()
def collect(
    method: TrainMethod,
    batches: Any,
    device: torch.device,
    *,
    with_features: bool = False,
    max_samples: int | None = None,
    fast: bool = False,
) -> SplitOutputs:
    """The method's outputs of every exit over `batches` (eval mode), stacked K first.

    `fast` runs an `inference_copy` of the backbone on channels_last inputs.
    """
    method.eval()
    runner = method_runner(method, fast)
    memory_format = torch.channels_last if fast else torch.preserve_format
    logits, features, labels = [], [], []
    scores: dict[str, list[list[torch.Tensor]]] = {}
    seen = 0
    for x, y in batches:
        exits = runner.all_exits(x.to(device, memory_format=memory_format))
        logits.append([out.logits.cpu() for out in exits])
        if with_features:
            features.append([out.features.cpu() for out in exits])
        for name in exits[0].scores.keys() - {MAX_SOFTMAX}:
            scores.setdefault(name, []).append([out.scores[name].cpu() for out in exits])
        labels.append(y.cpu())
        seen += len(y)
        if max_samples is not None and seen >= max_samples:
            break
    n = min(seen, max_samples) if max_samples is not None else seen
    return SplitOutputs(
        logits=np.stack(_per_exit(logits, n)),
        labels=torch.cat(labels)[:n].numpy().astype(np.int64),
        scores={name: np.stack(_per_exit(values, n)) for name, values in scores.items()},
        features=_per_exit(features, n) if with_features else None,
    )


def run_costs(
    method: InferenceCosts, backbone_mflops: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cumulative MFLOPs per exit of a prediction, and of a prediction plus each score.

    The method's "predict" extras count for every prediction; a score's extras count
    only in the curves of exit rules that read that score.
    """
    extras = method.extra_mflops()
    flops = np.asarray(backbone_mflops, dtype=np.float64)
    if "predict" in extras:
        flops = flops + np.cumsum(extras["predict"])
    score_flops = {
        name: flops + np.cumsum(values) for name, values in extras.items() if name != "predict"
    }
    return flops, score_flops


def fit_decisions(
    method: type[InferenceCosts], hparams: dict[str, Any], outputs: RunOutputs
) -> list[ExitDecision]:
    """Every exit rule of the run, fitted on val."""
    return [
        decision
        for name in rules_for(method, outputs, hparams)
        for decision in fit_rule(EXIT_RULES.get(name)(hparams), method, outputs)
    ]


def fit_rule(
    rule: ExitRule, method: type[InferenceCosts], outputs: RunOutputs
) -> list[ExitDecision]:
    """The rule's decisions, once its score is there and its `fit` kept its contract."""
    if not rule.applies_to(outputs):
        raise MethodContractError(
            f"{source_file(method)}: {method.__name__}.exit_rules lists {rule.name!r}, whose "
            f"score {rule.score!r} its runs do not provide (they have: "
            f"{', '.join([MAX_SOFTMAX, *outputs.score_names()])})"
        )
    decisions = rule.fit(outputs)
    if not isinstance(decisions, list) or not all(isinstance(d, ExitDecision) for d in decisions):
        got = type(decisions).__name__
        if isinstance(decisions, list):
            got += f" of {', '.join(sorted({type(d).__name__ for d in decisions}))}"
        raise MethodContractError(
            f"{source_file(rule)}: {type(rule).__name__}.fit must return list[ExitDecision], "
            f"got {got}"
        )
    return decisions


def budgeted_rows(outputs: RunOutputs, decisions: list[ExitDecision]) -> pd.DataFrame:
    """Test rows of every decision (columns rule, p, q, mflops, top1, exit_fractions),
    one block per rule and score read (a rule may read one score per operating point, e.g.
    EENet's per-budget scores), in the order the decisions come."""
    blocks = []
    correct = outputs.test.correct
    for rule, score in dict.fromkeys((d.rule, d.score) for d in decisions):
        chosen = [d for d in decisions if d.rule == rule and d.score == score]
        thresholds = np.array([d.thresholds for d in chosen])
        rows = protocol.thresholded_rows(
            outputs.test.score(score), correct, outputs.costs(score), thresholds
        )
        rows.insert(0, "q", [d.q for d in chosen])
        rows.insert(0, "p", [d.point for d in chosen])
        blocks.append(rows.assign(policy=rule))
    return pd.concat(blocks, ignore_index=True)


def run_curves(
    outputs: RunOutputs, decisions: list[ExitDecision], run: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Anytime rows and budgeted rows (one block per exit rule) of one run."""
    ident = {key: run[key] for key in RUN_KEYS}
    anytime = protocol.anytime_curve(outputs.test.logits, outputs.test.labels, outputs.flops)
    anytime = anytime.assign(**ident)[[*RUN_KEYS, "exit", "mflops", "top1"]]
    budgeted = budgeted_rows(outputs, decisions).assign(**ident)[BUDGETED_COLUMNS]
    return anytime, budgeted


def write_run_results(
    run_dir: Path,
    outputs: RunOutputs,
    method: type[InferenceCosts],
    run: dict[str, Any],
    with_features: bool = False,
) -> None:
    """outputs.npz (+ features.npz), exit_rules.json, anytime.csv, budgeted.csv of one run."""
    decisions = fit_decisions(method, run["hparams"], outputs)
    anytime, budgeted = run_curves(outputs, decisions, run)
    write_outputs(run_dir, outputs, with_features)
    write_decisions(run_dir, decisions)
    write_csv(run_dir / "anytime.csv", anytime)
    write_csv(run_dir / "budgeted.csv", budgeted)
    summary = ", ".join(f"{row.mflops:.2f}M: {row.top1:.2f}%" for row in anytime.itertuples())
    log.info("anytime top-1 per exit (test): %s", summary)


def classifiers_of(backbone: MultiExitNet) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, b) of every exit's classifier, for post-hoc methods that read them."""
    return [
        (layer.weight.detach().cpu().numpy(), layer.bias.detach().cpu().numpy())
        for layer in backbone.exit_classifiers()
    ]


def evaluate_run(
    run: dict[str, Any], run_dir: Path, split_dir: Path, *, with_features: bool = True
) -> None:
    """Write a finished run's outputs, fitted exit rules and curves; its model.pt must have
    been trained under `run` (the run's current config)."""
    from eebench.pipelines.workflow.runs import resolve_device, trained_state

    with run_lock(run_dir, "evaluate"):
        outputs = _evaluated_outputs(run, trained_state(run_dir, run), split_dir, with_features)
        method_cls = method_class(run["method"])
        write_run_results(run_dir, outputs, method_cls, run, with_features)
        record_environment(run_dir, "evaluate", resolve_device(run["device"]).type)


def _evaluated_outputs(
    run: dict[str, Any], state: dict[str, Any], split_dir: Path, with_features: bool
) -> RunOutputs:
    """Val and test (and train, for post-hoc methods) outputs of a trained method."""
    from eebench.pipelines.workflow.runs import build_method, make_loaders, resolve_device

    device = resolve_device(run["device"])
    loaders = make_loaders(run, split_dir, device)
    info = loaders.info
    method = build_method(run, info.num_classes, info.family, len(loaders.train), device)
    method.load_state_dict(state)
    val, test = (
        collect(method, loader.iterate(0), device, with_features=with_features, fast=True)
        for loader in (loaders.val, loaders.test)
    )
    flops, score_flops = run_costs(method, method.ctx.exit_mflops)
    outputs = RunOutputs(val, test, flops, score_flops, classifiers_of(method.backbone))
    outputs.n_train = len(loaders.split.train_idx)
    if with_features:
        outputs.train = collect(
            method,
            loaders.train_eval.iterate(0),
            device,
            with_features=True,
            max_samples=run.get("features_subset") or None,
            fast=True,
        )
    return outputs
