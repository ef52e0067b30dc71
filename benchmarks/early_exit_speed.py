"""Where real early exit's time goes (batch and pooled modes): measured speed-up against
what FLOPs and what per-stage times predict, for a trained run.

For each saved decision of `--rule` at the points `--points`, on `--batches` test batches
of the run's eval size, three speed-ups over running every exit:

- `predicted_flops` = F_K / Σ_k f_k F_k, with F_k the MFLOPs to reach exit k and f_k the
  fraction of samples leaving at exit k (what the suite's latency table compares with);
- `predicted_time` = T_K / Σ_k f_k T_k, with T_k the measured time to reach exit k on whole
  batches: what an early exit without overhead would reach if time were linear in the
  number of samples;
- `measured` = time(every exit) / time(early exit), the two interleaved batch by batch,
  median over `--rounds` rounds of the round totals; in `batch` mode each batch runs on
  its own (later exits see the few samples it leaves), in `pooled` mode the samples that
  go on wait for the next batches' (`PooledEarlyExit`: every exit runs on full batches).

The gap between the first two is the cost model: FLOPs count convolutions and linear
layers, not BatchNorm, activations, concatenations and memory traffic, whose share differs
from stage to stage. The gap between the last two is early exit's own cost: scoring, the
index copies of the state, and stages run on smaller batches (what pooling removes). The
per-stage table gives
each stage's share of FLOPs and of time.

    python benchmarks/early_exit_speed.py \\
        --run results/default/runs/fashion_mnist/msdnet_fmnist/standard/seed0 \\
        --split-dir results/default/splits [--threads 2 --points 10 20 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from eebench.methods.inference import ExitByExit
from eebench.pipelines.evaluation.infer import (
    Deployed,
    all_exits_prediction,
    choose_decision,
    deploy,
    run_split,
    split_batches,
)
from eebench.pipelines.evaluation.outputs import ExitDecision
from eebench.pipelines.services.io import write_csv

Batch = tuple[Tensor, Tensor]

DEFAULT_RUN = Path("results/default/runs/fashion_mnist/msdnet_fmnist/standard/seed0")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "early_exit_speed.csv"


def stage_seconds(runner: ExitByExit, inputs: list[Tensor], rounds: int) -> np.ndarray:
    """Median over rounds of the seconds each stage (stem in stage 0) takes on the batches."""
    per_round = []
    for _ in range(rounds):
        seconds = np.zeros(runner.num_exits)
        for x in inputs:
            start = time.perf_counter()
            state = runner.start(x)
            for k in range(runner.num_exits):
                state, _ = runner.next_exit(state)
                now = time.perf_counter()
                seconds[k] += now - start
                start = now
        per_round.append(seconds)
    return np.median(np.stack(per_round), axis=0)


def measured_speedups(
    deployed: Deployed, batches: Sequence[Batch], decision: ExitDecision, mode: str, rounds: int
) -> tuple[list[float], np.ndarray]:
    """time(every exit) / time(early exit) of each round (`run_split`: the two interleaved
    batch by batch, warm-up untimed), and the fraction of the samples leaving at each exit."""
    results = [run_split(deployed, batches, decision, mode) for _ in range(rounds)]
    exits = results[0]["exits"]
    fractions = np.bincount(exits, minlength=deployed.runner.num_exits) / len(exits)
    return [r["full"].total / r["early"].total for r in results], fractions


def stage_table(deployed: Deployed, seconds: np.ndarray) -> pd.DataFrame:
    """Each stage's share of the FLOPs and of the time of running every exit."""
    flops = np.asarray(deployed.outputs.flops, dtype=float)
    stage_flops = np.diff(flops, prepend=0.0)
    return pd.DataFrame(
        {
            "exit": np.arange(1, len(flops) + 1),
            "stage_mflops": stage_flops,
            "flops_share": stage_flops / flops[-1],
            "stage_ms": 1e3 * seconds,
            "time_share": seconds / seconds.sum(),
        }
    )


@torch.inference_mode()
def measure(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    deployed = deploy(args.run, "cpu")
    runner = deployed.runner
    batches = split_batches(deployed.run, args.split_dir)[: args.batches]
    inputs = [x.contiguous(memory_format=deployed.memory_format) for x, _ in batches]
    for x in inputs[:2]:  # warm-up, untimed
        all_exits_prediction(runner, x)
    seconds = stage_seconds(runner, inputs, args.rounds)
    cumulative = np.cumsum(seconds)
    rows = []
    for point in args.points:
        decision = choose_decision(deployed, args.rule, point=point)
        flops = np.asarray(deployed.outputs.costs(decision.score), dtype=float)
        for mode in ("batch", "pooled"):
            ratios, fractions = measured_speedups(deployed, batches, decision, mode, args.rounds)
            by_flops = flops[-1] / float(fractions @ flops)
            by_time = cumulative[-1] / float(fractions @ cumulative)
            median = statistics.median(ratios)
            rows.append(
                {
                    "run": str(args.run),
                    "backbone": deployed.run["backbone"],
                    "rule": args.rule,
                    "p": point,
                    "mode": mode,
                    "threads": torch.get_num_threads(),
                    "samples": sum(x.shape[0] for x in inputs),
                    "cost_fraction": float(fractions @ flops) / flops[-1],
                    "predicted_flops": by_flops,
                    "predicted_time": by_time,
                    "measured": median,
                    "measured_min": min(ratios),
                    "measured_max": max(ratios),
                    "measured_over_flops": median / by_flops,
                    "measured_over_time": median / by_time,
                    "exit_fractions": "/".join(f"{f:.3f}" for f in fractions),
                }
            )
    return stage_table(deployed, seconds), pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a finished run's folder")
    parser.add_argument(
        "--split-dir", type=Path, default=Path("results/default/splits"), help="its splits"
    )
    parser.add_argument("--rule", default="max_softmax", help="exit rule of the decisions")
    parser.add_argument("--points", type=int, nargs="+", default=[10, 20, 30])
    parser.add_argument("--batches", type=int, default=8, help="test batches timed")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stages, speeds = measure(args)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(stages.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        shown = speeds.drop(columns=["run"])
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out.is_file():  # one row per (run, rule, p, mode, threads): a new one replaces
        old = pd.read_csv(args.out)
        key = ["run", "rule", "p", "mode", "threads"]
        merged = old.merge(speeds[key], on=key, how="left", indicator=True)
        speeds = pd.concat([old[merged["_merge"] == "left_only"], speeds], ignore_index=True)
    write_csv(args.out, speeds)
    print(f"written to {args.out}")
    return speeds


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:  # as in backbone_speed.py: no spinning threads
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
