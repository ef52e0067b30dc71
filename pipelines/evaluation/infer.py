"""Real early exit: a trained (or post-hoc) run deployed with one saved exit decision.

The backbone runs stage by stage through the run's method hooks (`methods/inference.py`,
the path evaluation takes too); after each exit the samples whose score reaches that
exit's threshold leave the batch, so later stages compute only for the samples left.
Predictions and exits are those of the simulated budgeted protocol at the same decision
(a test checks them sample by sample); what this adds is the measured time.

Three timing modes: `batch` (each batch of the recipe's eval size on its own: later stages
see the few samples it has left), `pooled` (throughput: the samples that go on wait for
those of the next batches, so that every stage runs on at least a full batch) and
`stream` (one sample at a time: latency percentiles). Each mode also times running every
exit, so the measured speed-up sits beside the one FLOPs predict. Warm-up batches are run
first and never timed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from eebench.methods import POSTHOC_METHODS, method_kind
from eebench.methods.base import ExitHook, TrainMethod
from eebench.methods.inference import ExitByExit, InferenceState
from eebench.pipelines.evaluation import protocol
from eebench.pipelines.evaluation.evaluate import inference_copy
from eebench.pipelines.evaluation.outputs import (
    ExitDecision,
    RunOutputs,
    read_decisions,
    read_outputs,
)
from eebench.pipelines.workflow.config import load_run_config

log = logging.getLogger(__name__)

MODES = ("batch", "pooled", "stream")
#: Untimed batches (or samples, in stream mode) before timing starts.
WARMUP = 3


# --------------------------------------------------------------------------- loading


@dataclass
class Deployed:
    """A run ready for early exit: its exit-by-exit runner, saved decisions and costs."""

    run: dict[str, Any]
    runner: ExitByExit
    decisions: list[ExitDecision]
    outputs: RunOutputs
    device: torch.device

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last


def _trained_method(run: dict[str, Any], run_dir: Path, device: torch.device) -> TrainMethod:
    """The run's train-time method with its trained state, in eval mode."""
    from eebench.pipelines.data.datasets import get_dataset_info
    from eebench.pipelines.workflow.runs import build_method, trained_state

    info = get_dataset_info(run["dataset"])
    method = build_method(run, info.num_classes, info.family, 1, device)
    method.load_state_dict(trained_state(run_dir, run))
    return method.eval()


def _posthoc_hook(run: dict[str, Any], run_dir: Path, num_exits: int) -> ExitHook:
    """A post-hoc run's fitted method (its model.pt), applied after its source's hooks."""
    from eebench.pipelines.workflow.runs import trained_state

    method = POSTHOC_METHODS.get(run["method"])(run["hparams"], num_exits, seed=run["seed"])
    method.load_fitted(trained_state(run_dir, run))
    return method.eval()


def deploy(run_dir: Path, device: str | torch.device) -> Deployed:
    """Load a finished run (trained or post-hoc) for real early exit on `device`."""
    from eebench.pipelines.workflow.runs import resolve_device

    run_dir = Path(run_dir)
    run = load_run_config(run_dir / "config.yaml")
    decisions = read_decisions(run_dir)  # checked first: a missing file is a quick error
    outputs = read_outputs(run_dir)
    posthoc = method_kind(run["method"]) == "posthoc"
    source_dir = Path(run["source"]) if posthoc else run_dir
    source = load_run_config(source_dir / "config.yaml") if posthoc else run
    device = resolve_device(str(device))
    method = _trained_method(source, source_dir, device)
    hooks: list[ExitHook] = [method]
    if posthoc:
        hooks.append(_posthoc_hook(run, run_dir, method.backbone.num_exits).to(device))
    runner = ExitByExit(inference_copy(method.backbone), hooks)
    return Deployed(run, runner, decisions, outputs, device)


# --------------------------------------------------------------------------- decisions


class DecisionNotFoundError(ValueError):
    """No saved exit decision matches what was asked (rule, point or budget)."""


def val_cost(outputs: RunOutputs, decision: ExitDecision) -> float:
    """Mean MFLOPs per val sample under the decision (the cost it was fitted to spend)."""
    exits = protocol.assign_exits(
        outputs.val.score(decision.score), np.array([decision.thresholds])
    )
    return float(outputs.costs(decision.score)[exits[0]].mean())


def choose_decision(
    deployed: Deployed, rule: str, point: int | None = None, budget: float | None = None
) -> ExitDecision:
    """The saved decision of `rule` at budget index `point`, or the costliest one whose val
    cost stays within `budget` MFLOPs."""
    of_rule = [d for d in deployed.decisions if d.rule == rule]
    if not of_rule:
        known = sorted({d.rule for d in deployed.decisions})
        raise DecisionNotFoundError(
            f"the run saved no decision of exit rule {rule!r}; it has: {known}"
        )
    if point is not None:
        for decision in of_rule:
            if decision.point == point:
                return decision
        points = [d.point for d in of_rule]
        raise DecisionNotFoundError(
            f"exit rule {rule!r} has no point {point}; saved points: {points}"
        )
    if budget is None:
        raise DecisionNotFoundError("give a budget index (--p) or a budget in MFLOPs (--budget)")
    costs = [val_cost(deployed.outputs, d) for d in of_rule]
    within = [i for i, cost in enumerate(costs) if cost <= budget]
    if not within:
        raise DecisionNotFoundError(
            f"no decision of {rule!r} fits {budget} MFLOPs: the cheapest spends "
            f"{min(costs):.3f} MFLOPs per val sample; raise the budget"
        )
    return of_rule[max(within, key=lambda i: costs[i])]


# --------------------------------------------------------------------------- early exit


def early_exit(runner: ExitByExit, x: Tensor, decision: ExitDecision) -> tuple[Tensor, Tensor]:
    """Predictions and exit indices of a batch, each sample leaving at the first exit whose
    score reaches its threshold; later stages run only on the samples left (pooled early
    exit of one batch that never waits)."""
    pooled = PooledEarlyExit(runner, decision, batch_size=1)
    pooled.push(x)
    return pooled.finish()


class PooledEarlyExit:
    """Early exit over a sequence of batches in which the samples that go on wait for those
    of the next batches: exit k runs once at least `batch_size` samples wait for it (and for
    the rest at `finish`), so later stages run on full batches instead of the few samples
    one batch leaves them. Predictions and exits are those of each batch run alone
    (`early_exit`: in eval mode a sample's computation is its own); only the batches the
    stages see change."""

    def __init__(self, runner: ExitByExit, decision: ExitDecision, batch_size: int) -> None:
        self.runner, self.decision, self.batch_size = runner, decision, batch_size
        self.waiting: list[list[tuple[InferenceState, Tensor]]] = [
            [] for _ in range(runner.num_exits)
        ]
        self.done: list[tuple[Tensor, Tensor, int]] = []  # (rows, predictions, exit)
        self.seen = 0

    def push(self, x: Tensor) -> None:
        """Start a batch, then run every exit that has enough samples waiting."""
        rows = torch.arange(self.seen, self.seen + x.shape[0], device=x.device)
        self.seen += x.shape[0]
        self.waiting[0].append((self.runner.start(x), rows))
        self._run_ready(flush=False)

    def finish(self) -> tuple[Tensor, Tensor]:
        """Run what still waits; predictions and exits of every pushed sample, in order."""
        self._run_ready(flush=True)
        rows = torch.cat([rows for rows, _, _ in self.done])
        predictions = torch.cat([pred for _, pred, _ in self.done])
        exits = torch.cat([torch.full_like(pred, k) for _, pred, k in self.done])
        order = torch.argsort(rows)
        return predictions[order], exits[order]

    def _run_ready(self, flush: bool) -> None:
        for k, pending in enumerate(self.waiting):
            count = sum(len(rows) for _, rows in pending)
            if count == 0 or (count < self.batch_size and not flush):
                continue
            self.waiting[k] = []
            state = self.runner.concat([state for state, _ in pending])
            self._run_exit(k, state, torch.cat([rows for _, rows in pending]))

    def _run_exit(self, k: int, state: InferenceState, rows: Tensor) -> None:
        state, out = self.runner.next_exit(state)
        if k == self.runner.num_exits - 1:
            leave = torch.ones_like(rows, dtype=torch.bool)
        else:
            leave = out.scores[self.decision.score].double() >= self.decision.thresholds[k]
        self.done.append((rows[leave], out.logits[leave].argmax(dim=-1), k))
        stay = ~leave
        if bool(stay.any()):
            kept = self.runner.select(state, stay.nonzero().squeeze(1))
            self.waiting[k + 1].append((kept, rows[stay]))


def all_exits_prediction(runner: ExitByExit, x: Tensor) -> Tensor:
    """The last exit's predictions with every exit computed (the cost early exit saves)."""
    return runner.all_exits(x)[-1].logits.argmax(dim=-1)


# --------------------------------------------------------------------------- timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return result, time.perf_counter() - start


@dataclass
class Timing:
    """Seconds per call of one way of running (early exit or every exit) over a split."""

    seconds: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.seconds))

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.seconds, q)) if self.seconds else math.nan


def _chunks(batches: Iterable[tuple[Tensor, Tensor]], mode: str) -> Iterable[Tensor]:
    """The inputs, batch by batch, or one sample at a time in stream mode."""
    for x, _ in batches:
        if mode == "stream":
            yield from x.split(1)
        else:
            yield x


EarlyExitSteps = tuple[Callable[[Tensor], None], Callable[[], tuple[Tensor, Tensor]]]


def early_exit_steps(
    runner: ExitByExit, decision: ExitDecision, mode: str, batch_size: int
) -> EarlyExitSteps:
    """(step, finish) of a mode: `step(x)` takes the next input, `finish()` returns the
    predictions and exits of all of them (pooled: after running what still waits)."""
    if mode == "pooled":
        pooled = PooledEarlyExit(runner, decision, batch_size)
        return pooled.push, pooled.finish
    results: list[tuple[Tensor, Tensor]] = []

    def step(x: Tensor) -> None:
        results.append(early_exit(runner, x, decision))

    def finish() -> tuple[Tensor, Tensor]:
        predictions, exits = zip(*results, strict=True)
        return torch.cat(predictions), torch.cat(exits)

    return step, finish


@torch.inference_mode()
def run_split(
    deployed: Deployed,
    batches: Sequence[tuple[Tensor, Tensor]],
    decision: ExitDecision,
    mode: str = "batch",
    max_samples: int | None = None,
) -> dict[str, Any]:
    """Early exit over `batches` (inputs on the CPU), and every exit for the same inputs,
    each timed per input after `WARMUP` untimed ones (pooled: the exits an input makes
    ready, and the rest in the last input's time); predictions and exits are returned for
    every sample."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    inputs = [
        x.to(deployed.device, memory_format=deployed.memory_format)
        for x in _limited(_chunks(batches, mode), max_samples)
    ]
    runner, batch_size = deployed.runner, max(x.shape[0] for x in inputs)
    step, finish = early_exit_steps(runner, decision, mode, batch_size)
    for x in inputs[:WARMUP]:
        step(x)
        all_exits_prediction(runner, x)
    finish()
    step, finish = early_exit_steps(runner, decision, mode, batch_size)
    early, full = Timing([]), Timing([])
    for x in inputs:  # interleaved, so that drifts of the machine hit both alike
        early.seconds.append(_timed(lambda x=x: step(x), deployed.device)[1])
        full.seconds.append(_timed(lambda x=x: all_exits_prediction(runner, x), deployed.device)[1])
    (predictions, exits), seconds = _timed(finish, deployed.device)
    early.seconds[-1] += seconds
    return {
        "predictions": predictions.cpu().numpy(),
        "exits": exits.cpu().numpy(),
        "early": early,
        "full": full,
    }


def _limited(chunks: Iterable[Tensor], max_samples: int | None) -> Iterable[Tensor]:
    """At most `max_samples` samples (the last chunk cut to fit)."""
    seen = 0
    for x in chunks:
        if max_samples is not None and seen + x.shape[0] > max_samples:
            x = x[: max_samples - seen]
        if x.shape[0] == 0:
            return
        seen += x.shape[0]
        yield x


def speed_row(
    deployed: Deployed, decision: ExitDecision, result: dict[str, Any], mode: str
) -> dict:
    """One latency.csv row: the cost FLOPs predict and the time measured, both relative to
    running every exit."""
    costs = deployed.outputs.costs(decision.score)
    mflops = float(costs[result["exits"]].mean())
    full_mflops = float(deployed.outputs.flops[-1])
    early, full = result["early"], result["full"]
    predicted = full_mflops / mflops
    measured = full.total / early.total
    run = deployed.run
    return {
        "dataset": run["dataset"],
        "backbone": run["backbone"],
        "method": run["method"],
        "variant": run["variant"],
        "seed": run["seed"],
        "policy": decision.rule,
        "p": decision.point,
        "mode": mode,
        "device": deployed.device.type,
        "threads": torch.get_num_threads(),
        "samples": len(result["exits"]),
        "mflops": mflops,
        "full_mflops": full_mflops,
        "predicted_speedup": predicted,
        "measured_speedup": measured,
        "speedup_ratio": measured / predicted,
        "early_ms_p50": 1e3 * early.percentile(50),
        "early_ms_p90": 1e3 * early.percentile(90),
        "early_ms_p99": 1e3 * early.percentile(99),
        "full_ms_p50": 1e3 * full.percentile(50),
        "exit_fractions": protocol.format_exit_fractions(
            np.bincount(result["exits"], minlength=len(costs)) / len(result["exits"])
        ),
    }


def latency_table(
    deployed: Deployed,
    batches: Sequence[tuple[Tensor, Tensor]],
    decisions: Sequence[ExitDecision],
    modes: Sequence[str] = MODES,
    stream_samples: int = 200,
    batch_samples: int | None = None,
) -> pd.DataFrame:
    """Measured against predicted speed-up for each decision and mode."""
    rows = []
    for decision in decisions:
        for mode in modes:
            limit = stream_samples if mode == "stream" else batch_samples
            result = run_split(deployed, batches, decision, mode, max_samples=limit)
            row = speed_row(deployed, decision, result, mode)
            log.info(
                "%s p=%s %s: %.2f MFLOPs, predicted %.2fx, measured %.2fx (ratio %.2f)",
                decision.rule, decision.point, mode, row["mflops"],
                row["predicted_speedup"], row["measured_speedup"], row["speedup_ratio"],
            )  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows)


def infer_summary(
    deployed: Deployed,
    batches: Sequence[tuple[Tensor, Tensor]],
    decision: ExitDecision,
    mode: str = "batch",
    max_samples: int | None = None,
    out: str | None = None,
) -> str:
    """`eebench infer`: run the split with early exit; accuracy, cost, exits and timing."""
    result = run_split(deployed, batches, decision, mode, max_samples)
    labels = torch.cat([y for _, y in batches]).numpy()[: len(result["exits"])]
    if out:
        from eebench.pipelines.services.io import write_npz

        write_npz(out, predictions=result["predictions"], exits=result["exits"], labels=labels)
    row = speed_row(deployed, decision, result, mode)
    top1 = 100.0 * float((result["predictions"] == labels).mean())
    unit = "ms per sample" if mode == "stream" else "ms per batch"
    return "\n".join(
        [
            f"{deployed.run['method']} on {deployed.run['backbone']}: rule {decision.rule}, "
            f"point {decision.point}, {row['samples']} samples ({mode}, {row['device']}, "
            f"{row['threads']} threads)",
            f"top-1 {top1:.2f}%, {row['mflops']:.3f} MFLOPs per sample (every exit: "
            f"{row['full_mflops']:.3f}), exits {row['exit_fractions']}",
            f"time: early exit p50 {row['early_ms_p50']:.2f} / p90 {row['early_ms_p90']:.2f} / "
            f"p99 {row['early_ms_p99']:.2f} {unit}, every exit p50 {row['full_ms_p50']:.2f}",
            f"speed-up over every exit: measured {row['measured_speedup']:.2f}x, FLOPs predict "
            f"{row['predicted_speedup']:.2f}x (ratio {row['speedup_ratio']:.2f})",
        ]
    )


# --------------------------------------------------------------------------- workflow

LATENCY_FILE = "latency.csv"
LATENCY_COLUMNS = [
    *["dataset", "backbone", "method", "variant", "seed", "policy", "p", "mode", "device"],
    *["threads", "samples", "mflops", "full_mflops", "predicted_speedup", "measured_speedup"],
    *["speedup_ratio", "early_ms_p50", "early_ms_p90", "early_ms_p99", "full_ms_p50"],
    "exit_fractions",
]


def split_batches(
    run: dict[str, Any], split_dir: Path, split: str = "test"
) -> list[tuple[Tensor, Tensor]]:
    """A split of the run's dataset in evaluation batches, on the CPU (moved per call)."""
    from eebench.pipelines.workflow.runs import make_loaders

    loaders = make_loaders(run, split_dir, torch.device("cpu"))
    return list(getattr(loaders, split).iterate(0))


def measure_run_latency(
    study: dict[str, Any], run_dir: Path, split_dir: Path, device: str = "cpu"
) -> pd.DataFrame:
    """The study's latency measurements of one run (its `latency` section), as latency.csv."""
    from eebench.pipelines.services.io import write_csv

    section = study["latency"]
    deployed = deploy(run_dir, torch.device(device))
    decisions = [choose_decision(deployed, section["rule"], point=p) for p in section["points"]]
    batches = split_batches(deployed.run, split_dir)
    log.info("timing %d decisions of %s on %d test batches", len(decisions), run_dir, len(batches))
    samples = {key: section[key] for key in ("stream_samples", "batch_samples")}
    table = latency_table(deployed, batches, decisions, **samples)[LATENCY_COLUMNS]
    write_csv(Path(run_dir) / LATENCY_FILE, table)
    return table


def collect_latency(study: dict[str, Any], results_root: Path) -> pd.DataFrame:
    """Every timed run's latency.csv, stacked (empty, with the columns, when none is)."""
    from eebench.pipelines.workflow.config import latency_runs

    frames = [
        pd.read_csv(path, dtype={"variant": str})
        for spec in latency_runs(study)
        if (path := Path(results_root) / spec.path / LATENCY_FILE).is_file()
    ]
    if not frames:
        return pd.DataFrame(columns=LATENCY_COLUMNS)
    frame = pd.concat(frames, ignore_index=True)
    frame["variant"] = frame["variant"].fillna("")
    return frame[LATENCY_COLUMNS]
