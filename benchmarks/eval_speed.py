"""Speed of the vectorised budgeted protocol against its loop definition, on random logits.

Both implementations get the same exit scores (max softmax, computed once and timed
separately) and all budget indices p; the timed part is threshold fitting on val plus
exit assignment on test, the only part where they differ. The script asserts that
both return identical thresholds and exits, prints the times and the speed ratio and
writes them to `benchmarks/results/eval_speed.csv`.

    python benchmarks/eval_speed.py [--num-val 5000 --num-test 10000 ...]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eebench.pipelines.evaluation.protocol import (
    P_VALUES,
    assign_exits,
    assign_exits_reference,
    budget_proportions,
    budgeted_from_logits,
    fit_thresholds,
    fit_thresholds_reference,
    softmax_confidence,
)
from eebench.pipelines.services.io import write_csv

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "eval_speed.csv"


def random_outputs(
    num_exits: int, n: int, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Logits K×N×C (float32) and labels whose accuracy grows with depth, like a real run."""
    labels = rng.integers(0, num_classes, size=n)
    logits = rng.normal(size=(num_exits, n, num_classes)).astype(np.float32)
    signal = np.linspace(1.0, 4.0, num_exits, dtype=np.float32)
    logits[:, np.arange(n), labels] += signal[:, None]
    return logits, labels


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Shortest wall time of `repeats` calls (the least disturbed by other processes)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-exits", type=int, default=7)
    parser.add_argument("--num-val", type=int, default=5000)
    parser.add_argument("--num-test", type=int, default=10000)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="vectorised: best of this many")
    parser.add_argument(
        "--reference-p",
        type=int,
        default=len(P_VALUES),
        help="time the loop on this many evenly spaced p only, scaled per p (default: all 39)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    val_logits, val_labels = random_outputs(args.num_exits, args.num_val, args.num_classes, rng)
    test_logits, test_labels = random_outputs(args.num_exits, args.num_test, args.num_classes, rng)
    flops = np.linspace(10.0, 100.0, args.num_exits)

    softmax_s, (val, test) = best_time(
        lambda: (softmax_confidence(val_logits), softmax_confidence(test_logits)), args.repeats
    )
    props = budget_proportions(args.num_exits)
    num_p = len(P_VALUES)

    def vectorised() -> tuple[np.ndarray, np.ndarray]:
        thresholds = fit_thresholds(val, props)
        return thresholds, assign_exits(test, thresholds)

    subset = np.unique(np.linspace(0, num_p - 1, args.reference_p).round().astype(int))

    def reference() -> tuple[np.ndarray, np.ndarray]:
        thresholds = fit_thresholds_reference(val, props[subset])
        return thresholds, assign_exits_reference(test, thresholds)

    vec_s, (vec_t, vec_exits) = best_time(vectorised, args.repeats)
    ref_s, (ref_t, ref_exits) = best_time(reference, 1)
    if not np.array_equal(vec_t[subset], ref_t):
        raise AssertionError("vectorised and loop thresholds differ")
    if not np.array_equal(vec_exits[subset], ref_exits):
        raise AssertionError("vectorised and loop exit assignments differ")
    curve_s, _ = best_time(
        lambda: budgeted_from_logits(val_logits, val_labels, test_logits, test_labels, flops),
        args.repeats,
    )

    ref_per_p = ref_s / len(subset)
    ratio = ref_per_p / (vec_s / num_p)
    sizes = {
        "num_exits": args.num_exits,
        "num_val": args.num_val,
        "num_test": args.num_test,
        "num_classes": args.num_classes,
    }

    def row(part: str, impl: str, p_timed: int, seconds: float) -> dict[str, Any]:
        per_p = seconds / p_timed if p_timed else np.nan
        timing = {"p_timed": p_timed, "seconds": seconds, "seconds_per_p": per_p}
        return {**sizes, "part": part, "impl": impl, **timing, "seconds_39p": per_p * num_p}

    timings = pd.DataFrame(
        [
            row("fit+assign", "vectorised", num_p, vec_s),
            row("fit+assign", "loop_reference", len(subset), ref_s),
            row("max_softmax_scores", "vectorised", 0, softmax_s),
            row("budgeted_from_logits", "vectorised", num_p, curve_s),
        ]
    )
    write_csv(args.out, timings)

    scaled = (
        "" if len(subset) == num_p else f" (timed on p = {[P_VALUES[i] for i in subset]}, scaled)"
    )
    print(
        f"K={args.num_exits} val={args.num_val} test={args.num_test} C={args.num_classes}, "
        f"{num_p} budgets; identical thresholds and exits: yes"
    )
    print(f"fit+assign, vectorised (best of {args.repeats}): {vec_s:.4f} s")
    print(f"fit+assign, loop reference: {ref_per_p * num_p:.3f} s for {num_p} p{scaled}")
    print(f"speed ratio (per p): {ratio:.0f}x")
    print(f"max softmax scores (shared by both, not in the ratio): {softmax_s:.4f} s")
    print(f"whole budgeted_from_logits (scores + fit + assign + metrics): {curve_s:.4f} s")
    print(f"timings written to {args.out}")
    return timings


if __name__ == "__main__":
    main()
