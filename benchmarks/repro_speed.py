"""What the reproducible CPU mode costs: training and evaluation steps, mode on vs off.

The mode is fixed when a process starts (pipelines/services/repro.py), so each side is a worker
process of its own: `on` (the mode: AVX2 kernels, MKL's AVX2 branch, 1 thread,
deterministic algorithms) and `off` (EEBENCH_REPRODUCIBLE=0: the kernels torch picks on
this CPU, 1 thread, as the default Snakemake profile runs every job). The parent drives
both in lockstep, one step each in rotating order per round, so that the load of a shared
machine falls on both alike; `ratio` is the median over rounds of t(on)/t(off) (> 1: the
mode is slower), `ratio_min`/`ratio_max` its spread. A training step is one SGD step on
the sum of the exits' cross-entropies (batch 64 of 1×28×28, 10 classes); an evaluation
step a forward of all exits without gradients (batch 256). Results:
`benchmarks/results/repro_speed.csv`.

    python benchmarks/repro_speed.py [--models msdnet_fmnist ranet_fmnist] [--rounds 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "repro_speed.csv"
MODES = {"on": {"EEBENCH_REPRODUCIBLE": "1"}, "off": {"EEBENCH_REPRODUCIBLE": "0"}}
BATCH = {"train": 64, "eval": 256}


def worker(model_name: str) -> None:
    """Answer each line `train` or `eval` on stdin with one timed step's seconds."""
    from eebench.pipelines.services.repro import apply_env, configure_torch

    apply_env()
    import torch
    import torch.nn.functional as F

    from eebench.backbones import create_model

    configure_torch("cpu", threads=1)
    torch.manual_seed(0)
    model = create_model(model_name, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    data = {kind: torch.randn(size, 1, 28, 28) for kind, size in BATCH.items()}
    labels = torch.randint(0, 10, (BATCH["train"],))

    def train() -> None:
        model.train()
        loss = sum(F.cross_entropy(logits, labels) for logits in model(data["train"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            model(data["eval"])

    steps = {"train": train, "eval": evaluate}
    for line in sys.stdin:
        start = time.perf_counter()
        steps[line.strip()]()
        print(time.perf_counter() - start, flush=True)


class Worker:
    """One worker process under one mode."""

    def __init__(self, model: str, mode: str) -> None:
        env = {**os.environ, **MODES[mode], "OMP_WAIT_POLICY": "PASSIVE"}
        env.pop("OMP_NUM_THREADS", None)
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", model],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def step(self, kind: str) -> float:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(kind + "\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait()


def measure(model: str, kind: str, rounds: int, warmup: int) -> list[dict[str, object]]:
    """Interleaved rounds of one step per mode; a row per mode."""
    workers = {mode: Worker(model, mode) for mode in MODES}
    try:
        for _ in range(warmup):
            for one in workers.values():
                one.step(kind)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for index in range(rounds):
            order = list(MODES) if index % 2 == 0 else list(reversed(MODES))
            for mode in order:
                times[mode].append(workers[mode].step(kind))
    finally:
        for one in workers.values():
            one.close()
    ratios = [on / off for on, off in zip(times["on"], times["off"], strict=True)]
    return [
        {
            "model": model,
            "step": kind,
            "mode": mode,
            "batch": BATCH[kind],
            "median_ms": round(1000 * statistics.median(times[mode]), 2),
            "img_s": round(BATCH[kind] / statistics.median(times[mode]), 1),
            "ratio": round(statistics.median(ratios), 3) if mode == "on" else 1.0,
            "ratio_min": round(min(ratios), 3) if mode == "on" else 1.0,
            "ratio_max": round(max(ratios), 3) if mode == "on" else 1.0,
            "rounds": rounds,
        }
        for mode in MODES
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["msdnet_fmnist", "ranet_fmnist"])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    import pandas as pd

    rows = [
        row
        for model in args.models
        for kind in BATCH
        for row in measure(model, kind, args.rounds, args.warmup)
    ]
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(table.to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
