"""What a study's jobs cost, whole processes: this checkout against an earlier one, side by side.

The CPU studies' jobs are short (a training job of the evidence study lasts 35–150 s), so
what a job pays besides its model's steps counts: the imports at its start and the memory
allocator under its steps. This benchmark times real `eebench` jobs, as the Snakefile
starts them, on a small copy of the evidence study (seed 0 of `standard` and
`joint_bilevel` on msdnet_fmnist, `l2w` on ranet_fmnist, `calibrated_dnn` after
`standard`, `eenet` after `standard`; `--train-subset` images, `--epochs` epochs: the
evidence study's own sizes are `--train-subset 10000 --epochs 3`), and with
`--tables FOLDER` the tables job on a finished study's results (a copy: it rewrites its
tables), under three sides:

- `baseline`: the checkout given by `--baseline` (e.g. `git worktree add /tmp/base <commit>`),
  imported in place of this one, with the system's malloc;
- `current`: this checkout, the system's malloc;
- `current+alloc`: this checkout under the allocator the Snakefile preloads
  (pipelines/services/allocator.py; skipped when the machine has none).

Each round runs every side's whole job sequence, the sides in rotating order, so that a
shared machine's load falls on all alike; `ratio` is the median over rounds of
t(baseline)/t(side) per job kind and in total (> 1: faster than the baseline). Every side's
`outputs.npz` must hold the same arrays (the speed changes no number): the benchmark says
so, or names the array that differs. Results: `benchmarks/results/job_speed.csv`.

    git worktree add /tmp/base <commit>
    python benchmarks/job_speed.py --baseline /tmp/base [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from eebench.pipelines.services.io import write_csv

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "job_speed.csv"
#: The jobs of one round, in workflow order: (command, run path).
JOBS = (
    ("train", "runs/fashion_mnist/msdnet_fmnist/standard/seed0"),
    ("train", "runs/fashion_mnist/msdnet_fmnist/joint_bilevel/seed0"),
    ("train", "runs/fashion_mnist/ranet_fmnist/l2w/seed0"),
    ("evaluate", "runs/fashion_mnist/msdnet_fmnist/standard/seed0"),
    ("evaluate", "runs/fashion_mnist/msdnet_fmnist/joint_bilevel/seed0"),
    ("evaluate", "runs/fashion_mnist/ranet_fmnist/l2w/seed0"),
    ("calibrate", "runs/fashion_mnist/msdnet_fmnist/calibrated_dnn/seed0"),
    ("calibrate", "runs/fashion_mnist/msdnet_fmnist/eenet/seed0"),
)


def evidence_config(checkout: Path) -> dict[str, Any]:
    """The evidence study's config as `checkout` has it (the baseline's may differ)."""
    return yaml.safe_load((checkout / "config" / "evidence.yaml").read_text())


def small_study(train_subset: int, epochs: int, checkout: Path = ROOT) -> dict[str, object]:
    """The evidence study's settings as `checkout` has them, seed 0, its kinds of job on
    few images."""
    study = evidence_config(checkout)
    dataset = study["datasets"]["fashion_mnist"]
    dataset["train_subset"] = train_subset
    dataset["recipe_overrides"] = {"epochs": epochs}
    study.update(study="job_speed", seeds=[0])
    by_method = {run["method"]: run for run in study["runs"] if "variants" not in run}
    study["runs"] = [
        {"method": "standard", "backbones": ["msdnet_fmnist"]},
        {"method": "joint_bilevel", "backbones": ["msdnet_fmnist"]},
        {**by_method["l2w"], "backbones": ["ranet_fmnist"]},
        {"method": "calibrated_dnn", "backbones": ["msdnet_fmnist"]},
        {"method": "eenet", "backbones": ["msdnet_fmnist"]},
    ]
    return study


def side_environments(baseline: Path, shim: Path) -> dict[str, dict[str, str]]:
    """Each side's environment: which eebench is imported, which malloc is preloaded."""
    from eebench.pipelines.services.allocator import fast_allocator

    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONPATH")}
    (shim / "eebench").symlink_to(baseline.resolve(), target_is_directory=True)
    sides = {"baseline": {**base, "PYTHONPATH": str(shim)}, "current": dict(base)}
    library = fast_allocator()
    if library is not None:
        sides["current+alloc"] = {**base, "LD_PRELOAD": str(library)}
    return sides


def run_job(env: dict[str, str], study: Path, results: Path, command: str, run: str) -> float:
    """Seconds of one `eebench` job, start to exit, as a Snakemake job runs it."""
    args = [sys.executable, "-m", "eebench.pipelines.cli", command, "--study", str(study)]
    args += ["--results", str(results)]
    if command in ("train", "evaluate", "calibrate"):
        args += ["--run", run, "--threads", "1"]
    elif command == "split":
        args += ["--dataset", "fashion_mnist"]
    if command == "train":
        args.append("--restart")
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{command} {run} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def same_outputs(results: dict[str, Path]) -> str:
    """'identical', or the first array of an outputs.npz that differs between the sides."""
    sides = list(results)
    for _, run in JOBS:
        first = np.load(results[sides[0]] / run / "outputs.npz")
        for side in sides[1:]:
            other = np.load(results[side] / run / "outputs.npz")
            for key in first.files:
                if not np.array_equal(first[key], other[key]):
                    return f"{run}/outputs.npz[{key}] differs ({sides[0]} vs {side})"
    return "identical"


def tables_digest(results: Path) -> str:
    """One digest of every table the tables job wrote (to compare the sides' tables)."""
    digest = hashlib.sha256()
    for path in sorted((results / "tables").glob("*.csv")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def time_tables(
    sides: dict[str, dict[str, str]], studies: dict[str, Path], results: Path, order: list[str]
) -> tuple[list[dict[str, object]], set[str]]:
    """The tables job of each side on the same finished study, and the tables' digests."""
    rows, digests = [], set()
    for side in order:
        seconds = run_job(sides[side], studies[side], results, "tables", "")
        digests.add(tables_digest(results))
        rows.append(dict(side=side, job="tables", run="", s=seconds))
    return rows, digests


def tables_study(checkout: Path) -> dict[str, object]:
    """The evidence study as `checkout` has it, with this checkout's seeds: the sides'
    tables jobs then read the same runs of the finished study."""
    study = evidence_config(checkout)
    study["seeds"] = evidence_config(ROOT)["seeds"]
    return study


def side_checkouts(sides: dict[str, dict[str, str]], baseline: Path) -> dict[str, Path]:
    """The checkout whose code and config each side runs."""
    return {side: baseline if side == "baseline" else ROOT for side in sides}


def folder_name(side: str) -> str:
    """A side's name as a file name (current+alloc -> current_alloc)."""
    return side.replace("+", "_")


def measure(
    rounds: int, baseline: Path, size: tuple[int, int], tables: Path | None
) -> tuple[pd.DataFrame, str]:
    """Every side's jobs, `rounds` times; `size` = (training images, epochs)."""
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        (tmp / "shim").mkdir()
        sides = side_environments(baseline, tmp / "shim")
        checkouts = side_checkouts(sides, baseline)
        studies, evidence = {}, {}
        for side, checkout in checkouts.items():  # each side's own evidence settings
            studies[side] = tmp / f"{folder_name(side)}.yaml"
            studies[side].write_text(yaml.safe_dump(small_study(*size, checkout), sort_keys=False))
            evidence[side] = tmp / f"{folder_name(side)}_tables.yaml"
            evidence[side].write_text(yaml.safe_dump(tables_study(checkout), sort_keys=False))
        results = {side: tmp / folder_name(side) for side in sides}
        for side, env in sides.items():  # the split, untimed
            run_job(env, studies[side], results[side], "split", "")
        rows, digests = [], set()
        for index in range(rounds):
            order = list(sides)[index % len(sides) :] + list(sides)[: index % len(sides)]
            for side in order:
                for command, run in JOBS:
                    seconds = run_job(sides[side], studies[side], results[side], command, run)
                    rows.append(dict(round=index, side=side, job=command, run=run, s=seconds))
                    print(f"round {index} {side:14s} {command:9s} {run:55s} {seconds:6.1f} s")
            if tables is not None:
                timed, seen = time_tables(sides, evidence, tables, order)
                rows += [dict(row, round=index) for row in timed]
                digests |= seen
                print(
                    f"round {index} tables: "
                    + ", ".join(f"{r['side']} {r['s']:.1f} s" for r in timed)
                )
        identity = same_outputs(results)
        if len(digests) > 1:
            identity += "; the sides' tables differ"
        elif digests:
            identity += "; tables identical"
        return pd.DataFrame(rows), identity


def summarise(times: pd.DataFrame) -> pd.DataFrame:
    """Per job kind and in total: median seconds of each side, median ratio to the baseline."""
    per_round = times.groupby(["round", "side", "job"])["s"].sum().unstack("job")
    per_round["total"] = per_round.sum(axis=1)
    rows = []
    for kind in per_round.columns:
        table = per_round[kind].unstack("side")
        for side in table.columns:
            ratios = table["baseline"] / table[side]
            rows.append(
                dict(
                    job=kind,
                    side=side,
                    median_s=round(float(table[side].median()), 2),
                    ratio=round(float(ratios.median()), 3),
                    ratio_min=round(float(ratios.min()), 3),
                    ratio_max=round(float(ratios.max()), 3),
                )
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout to compare to")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=2560)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--tables",
        type=Path,
        help="a finished evidence study's results folder (a copy): also time its tables job",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not (args.baseline / "pipelines" / "cli.py").is_file():
        raise SystemExit(
            f"--baseline {args.baseline} is not an eebench checkout (no pipelines/cli.py)"
        )
    times, identity = measure(
        args.rounds, args.baseline, (args.train_subset, args.epochs), args.tables
    )
    table = summarise(times)
    table["outputs"] = identity
    write_csv(args.out, table)
    print(table.to_string(index=False))
    print(f"outputs.npz of every side: {identity}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
