"""Does torch.compile with a persistent cache pay for a CPU study's training jobs? Eager
against compiled, whole `eebench train` jobs at the evidence study's size.

A study's jobs are separate processes, so each compiled job pays the compiler unless the
compiled code is cached on disk and shared (inductor's FX graph and AOT autograd caches
under `TORCHINDUCTOR_CACHE_DIR`). Per backbone this times, one job at a time, seed 0 of
`standard` at the evidence study's settings (this checkout's `config/evidence.yaml`;
`--train-subset`, `--epochs`): the eager job (the studies' way), the compiled job on an
empty cache (`cold`: what the first job of a study would pay) and the same compiled job
again (`warm`: what every later job would pay). `ratio` is t(eager)/t(side) (> 1: faster
than eager), and `same_weights` says whether the compiled model.pt holds the eager one's
bits: the reproducible CPU mode needs the same numbers, so a compiled study would also
need its numbers regenerated and its cross-machine identity measured anew.
Results: `benchmarks/results/compile_cache.csv`.

    python benchmarks/compile_cache.py [--backbones msdnet_fmnist ranet_fmnist]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml
from job_speed import run_job, small_study

from eebench.pipelines.services.io import write_csv
from eebench.pipelines.training.checkpoint import load_torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "compile_cache.csv"
SIDES = ("eager", "cold", "warm")


def study(backbone: str, train_subset: int, epochs: int, compiled: bool) -> dict[str, object]:
    """job_speed's small copy of the evidence study, with `standard` on `backbone` only,
    eager or compiled."""
    config = small_study(train_subset, epochs)
    config["datasets"]["fashion_mnist"]["recipe_overrides"]["compile"] = compiled
    config.update(study="compile_cache", runs=[{"method": "standard", "backbones": [backbone]}])
    return config


def weights(results: Path, run: str) -> dict[str, torch.Tensor]:
    return load_torch(results / run / "model.pt", ("method",))["method"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def measure_backbone(backbone: str, size: tuple[int, int], tmp: Path) -> list[dict[str, object]]:
    """Eager, compiled on an empty cache, compiled again on that cache: one row each."""
    run = f"runs/fashion_mnist/{backbone}/standard/seed0"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"cache_{backbone}")}
    configs, results = {}, {}
    for kind, compiled in (("eager", False), ("compiled", True)):
        configs[kind] = tmp / f"{backbone}_{kind}.yaml"
        configs[kind].write_text(yaml.safe_dump(study(backbone, *size, compiled), sort_keys=False))
        results[kind] = tmp / f"{backbone}_{kind}"
        run_job(env, configs[kind], results[kind], "split", "")
    seconds = {"eager": run_job(env, configs["eager"], results["eager"], "train", run)}
    for side in ("cold", "warm"):
        seconds[side] = run_job(env, configs["compiled"], results["compiled"], "train", run)
        print(f"{backbone:14s} {side:5s} {seconds[side]:6.1f} s (eager {seconds['eager']:.1f} s)")
    same = same_weights(weights(results["eager"], run), weights(results["compiled"], run))
    return [
        dict(
            backbone=backbone,
            side=side,
            s=round(seconds[side], 2),
            ratio=round(seconds["eager"] / seconds[side], 3),
            same_weights=True if side == "eager" else same,
        )
        for side in SIDES
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["msdnet_fmnist", "ranet_fmnist"])
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones:
            rows += measure_backbone(backbone, (args.train_subset, args.epochs), Path(folder))
    table = pd.DataFrame(rows)
    write_csv(args.out, table)
    print(table.to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
