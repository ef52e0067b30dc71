"""Training and evaluation throughput of our MSDNet/RANet against the original code.

For `msdnet_cifar` and `ranet_cifar` with 100 classes (3×32×32 inputs), on the CPU
(`--threads`, default 2) and, when `torch.cuda.is_available()`, on the GPU:

- training: one SGD step (lr 0.1, momentum 0.9, weight decay 1e-4) on the sum of the
  exits' cross-entropies, batch 64, after `--warmup` (3) warm-up steps;
- evaluation: one forward of all exits, batch 256, without gradients.

Rows: `reference` is the original code (kalviny/MSDNet-PyTorch `models/msdnet.py`,
yangle15/RANet-pytorch `models/RANet.py`), imported from the exported repositories given
by `--reference-msdnet` / `--reference-ranet` and built with the args namespace of our
config (shared/spec/backbones.md §1; the script checks that the parameter counts agree); without a
folder that side is skipped. `ours eager` is our model run as the reference runs
(NCHW, BatchNorm, `no_grad`): in training it executes the same kernels as the
reference, so its ratio shows how much the noise alone moves a ratio. Then one speed
option per row: `channels_last`; for evaluation `fast` = `inference_mode` +
`fold_batchnorm` + channels_last (the fastest numerically equal eval path: its logits
must match the eager ones within 1e-4 of the largest logit, `max_rel_diff`);
`--compile [train] [eval]` adds `torch.compile` rows (eval with inductor weight
freezing) whose one-off compilation time is `prep_s`. `--amp bf16|fp16` adds mixed
precision rows (autocast; with `--compile`, compiled too): the optimised GPU path of
training runs (recipe `amp`, `channels_last`, `compile`). Their eval logits are not
numerically equal; `max_rel_diff` says how far they are.

How to read it: the machine is shared, so absolute img/s drift with the load. Only
numbers from one run are comparable: within a (device, model, mode) group the variants
are timed in interleaved rounds (one step each, rotating order; `--train-rounds` 10,
`--eval-rounds` 5) and `ratio` is the median
over rounds of t(reference)/t(row), > 1 meaning faster than the original code
(`ratio_min`/`ratio_max` give the spread over rounds); `vs_eager` is the same median
against `ours eager` (fp32, NCHW: what the optimised paths gain). `img_s` is batch / median step
time. `peak_frac` is the achieved FLOP rate over the fp32 matmul peak measured in the
same run (best of a few n×n `torch.mm`, before and after each model): FLOPs per image =
2 × the MSDNet-convention count `exit_mflops(name, 100)[-1]` (which counts one
multiply-accumulate as 1 op), a training step = 3 × forward. Results go to
`benchmarks/results/backbone_speed.csv`.

Run as a script, it sets OMP_WAIT_POLICY=PASSIVE unless set: spinning OpenMP threads
on shared, oversubscribed cores made 2-thread steps up to 10× slower.

    python benchmarks/backbone_speed.py --reference-msdnet /tmp/refs/MSDNet-PyTorch \\
        --reference-ranet /tmp/refs/RANet-pytorch [--threads 2 --compile ...]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eebench.backbones import MultiExitNet, create_model, fold_batchnorm
from eebench.backbones.flops import exit_mflops
from eebench.pipelines.services.io import write_csv

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "backbone_speed.csv"
MODELS = ("msdnet_cifar", "ranet_cifar")
NUM_CLASSES = 100  # the references take the class count from their dataset name: cifar100
TRAIN_FACTOR = 3  # a training step ≈ forward + backward (2× forward)
SHOWN = [
    *["device", "model", "mode", "impl", "options", "img_s", "ratio", "vs_eager", "peak_frac"],
    "prep_s",
]
EQUAL_TOL = 1e-4  # max |Δlogit| / max |logit| for the "numerically equal" eval options

# Where each reference model lives in its repository, and the args namespace that builds
# our config there (the repos' args.py names; the project spec, shared/spec/backbones.md §1).
REFERENCES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "msdnet_cifar": (
        "models/msdnet.py",
        "MSDNet",
        {
            "nBlocks": 7,
            "stepmode": "lin_grow",
            "step": 1,
            "base": 1,
            "nChannels": 16,
            "growthRate": 6,
            "grFactor": [1, 2, 4],
            "bnFactor": [1, 2, 4],
            "nScales": 3,
            "prune": "max",
            "reduction": 0.5,
            "bottleneck": True,
            "data": "cifar100",
        },
    ),
    "ranet_cifar": (
        "models/RANet.py",
        "RANet",
        {
            "nBlocks": 2,
            "block_step": 2,
            "step": 4,
            "stepmode": "even",
            "scale_list": [1, 2, 3, 3],
            "grFactor": [4, 2, 1, 1],
            "bnFactor": [4, 2, 1, 1],
            "nScales": 4,
            "nChannels": 16,
            "growthRate": 6,
            "compress_factor": 0.25,
            "reduction": 0.5,
            "bnAfter": True,
            "data": "cifar100",
        },
    ),
}

Step = Callable[[], Any]


# --------------------------------------------------------------------------- models


def load_reference(name: str, repo: Path) -> nn.Module:
    """Import the reference model file from `repo` (never copied) and build `name`."""
    relpath, class_name, kwargs = REFERENCES[name]
    path = repo / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the exported repository's root folder")
    spec = importlib.util.spec_from_file_location(f"_reference_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with contextlib.redirect_stdout(io.StringIO()):  # MSDNet prints its layer plan
        return getattr(module, class_name)(SimpleNamespace(**kwargs))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def to_channels_last(model: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    return model.to(memory_format=torch.channels_last), x.contiguous(
        memory_format=torch.channels_last
    )


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(x: Tensor, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on x's device (`amp` bf16/fp16), or nothing."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=AMP_DTYPES[amp])


def train_step(model: nn.Module, x: Tensor, y: Tensor, amp: str | None = None) -> Step:
    """One SGD step on Σ_k CE(z_k, y), the reference recipe (shared/spec/methods.md §7);
    with fp16 the loss is scaled, as the training engine does."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp == "fp16")

    def step() -> None:
        model.train()  # the reference model serves both modes
        optimizer.zero_grad(set_to_none=True)
        with autocast(x, amp):
            loss = sum(F.cross_entropy(z, y) for z in model(x))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def eval_step(model: nn.Module, x: Tensor, inference: bool, amp: str | None = None) -> Step:
    """All exits of one batch; `no_grad` as the references' validation, or `inference_mode`."""

    def step() -> list[Tensor]:
        model.eval()
        with torch.inference_mode() if inference else torch.no_grad(), autocast(x, amp):
            return model(x)

    return step


# --------------------------------------------------------------------------- timing


@dataclass
class Variant:
    """One implementation with one set of speed options, timed on one (model, mode)."""

    impl: str
    options: str
    step: Step
    prep_s: float = 0.0
    checked: bool = False  # must reproduce the plain eval logits
    compared: bool = False  # eval logits compared with the plain ones, not required equal
    times: list[float] = field(default_factory=list)
    max_rel_diff: float = float("nan")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Step, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def run_interleaved(
    variants: list[Variant], device: torch.device, warmup: int, rounds: int
) -> None:
    """Warm every variant up, then time one step of each per round, rotating the order."""
    for v in variants:
        first = timed(v.step, device)  # includes compilation, cuDNN/oneDNN set-up
        for _ in range(warmup - 1):
            timed(v.step, device)
        v.prep_s += first
    for r in range(rounds):
        for i in range(len(variants)):
            v = variants[(r + i) % len(variants)]
            v.times.append(timed(v.step, device))
    for v in variants:  # a first call's extra time over a normal step is the one-off cost
        v.prep_s = max(v.prep_s - statistics.median(v.times), 0.0)


def measure_peak(device: torch.device, n: int, repeats: int) -> float:
    """Best fp32 FLOP/s of an n×n×n torch.mm (2n³ FLOPs), in GFLOP/s."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------- variants


def relative_difference(reference: list[Tensor], other: list[Tensor]) -> float:
    """Largest |Δlogit| relative to the largest |logit|."""
    scale = max(float(z.abs().max()) for z in reference)
    pairs = zip(reference, other, strict=True)
    return max(float((a - b.float()).abs().max()) for a, b in pairs) / scale


def check_equal(reference: list[Tensor], fast: list[Tensor], what: str) -> float:
    """`relative_difference`; fail above EQUAL_TOL."""
    rel = relative_difference(reference, fast)
    if rel > EQUAL_TOL:
        raise AssertionError(f"{what}: logits differ by {rel:.2e} (relative), > {EQUAL_TOL}")
    return rel


def train_variants(
    ours: MultiExitNet,
    ref: nn.Module | None,
    x: Tensor,
    y: Tensor,
    compile_: bool,
    amp: str | None = None,
) -> list[Variant]:
    """Reference, ours as the reference runs, then one speed option per row."""
    variants = []
    if ref is not None:
        variants.append(Variant("reference", "eager", train_step(ref, x, y)))
    variants.append(Variant("ours", "eager", train_step(copy.deepcopy(ours), x, y)))
    model, x_cl = to_channels_last(copy.deepcopy(ours), x)
    variants.append(Variant("ours", "channels_last", train_step(model, x_cl, y)))
    if compile_:
        model, x_cl = to_channels_last(copy.deepcopy(ours), x)
        step = train_step(torch.compile(model), x_cl, y)
        variants.append(Variant("ours", "channels_last+compile", step))
    if amp is not None:
        model, x_cl = to_channels_last(copy.deepcopy(ours), x)
        variants.append(Variant("ours", f"channels_last+{amp}", train_step(model, x_cl, y, amp)))
    if amp is not None and compile_:
        model, x_cl = to_channels_last(copy.deepcopy(ours), x)
        step = train_step(torch.compile(model), x_cl, y, amp)
        variants.append(Variant("ours", f"channels_last+{amp}+compile", step))
    return variants


def eval_variants(
    ours: MultiExitNet, ref: nn.Module | None, x: Tensor, compile_: bool, amp: str | None = None
) -> list[Variant]:
    """Reference, ours as the reference runs, the fast path, optionally compiled and in
    mixed precision.

    Variants with `checked` set must reproduce the plain logits (`check_equal`); mixed
    precision ones report how far theirs are (`compared`).
    """
    variants = []
    if ref is not None:
        variants.append(Variant("reference", "eager", eval_step(ref, x, inference=False)))
    variants.append(Variant("ours", "eager", eval_step(copy.deepcopy(ours), x, inference=False)))
    start = time.perf_counter()
    fast, x_cl = to_channels_last(fold_batchnorm(ours), x)
    prep = time.perf_counter() - start
    variants.append(
        Variant("ours", "fast", eval_step(fast, x_cl, inference=True), prep_s=prep, checked=True)
    )
    if compile_:
        step = eval_step(torch.compile(fast), x_cl, inference=True)
        variants.append(Variant("ours", "fast+compile", step, prep_s=prep, checked=True))
    if amp is not None:
        step = eval_step(fast, x_cl, inference=True, amp=amp)
        variants.append(Variant("ours", f"fast+{amp}", step, prep_s=prep, compared=True))
    if amp is not None and compile_:
        step = eval_step(torch.compile(copy.deepcopy(fast)), x_cl, inference=True, amp=amp)
        variants.append(Variant("ours", f"fast+{amp}+compile", step, prep_s=prep, compared=True))
    return variants


# --------------------------------------------------------------------------- driver


def bench_model(
    name: str, ref_repo: Path | None, device: torch.device, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Time every train and eval variant of one model on one device; one row per variant."""
    torch.manual_seed(args.seed)
    ours = create_model(name, NUM_CLASSES).to(device)
    ref = None
    if ref_repo is None:
        flag = "--reference-" + name.split("_")[0]
        print(f"[{name}] no {flag} DIR given: skipping the reference side")
    else:
        ref = load_reference(name, ref_repo).to(device)
        if n_params(ref) != n_params(ours):
            raise AssertionError(
                f"{name}: reference has {n_params(ref)} parameters, ours "
                f"{n_params(ours)}: not the same architecture"
            )
    gen = torch.Generator().manual_seed(args.seed)
    x_train = torch.randn(args.train_batch, 3, 32, 32, generator=gen).to(device)
    y_train = torch.randint(0, NUM_CLASSES, (args.train_batch,), generator=gen).to(device)
    x_eval = torch.randn(args.eval_batch, 3, 32, 32, generator=gen).to(device)
    gflop_fwd = 2 * float(exit_mflops(name, NUM_CLASSES)[-1]) / 1e3  # per image, 2 × MACs

    rows = []
    groups: list[tuple[str, int, int, int, int, Callable[[], list[Variant]]]] = [
        (
            "train",
            args.train_batch,
            args.warmup,
            args.train_rounds,
            TRAIN_FACTOR,
            lambda: train_variants(ours, ref, x_train, y_train, "train" in args.compile, args.amp),
        ),
        (
            "eval",
            args.eval_batch,
            args.eval_warmup,
            args.eval_rounds,
            1,
            lambda: eval_variants(ours, ref, x_eval, "eval" in args.compile, args.amp),
        ),
    ]
    for mode, batch, warmup, rounds, factor, build in groups:
        if mode not in args.modes:
            continue
        variants = build()
        print(f"[{name}] {mode}: {len(variants)} variants × {rounds} rounds", flush=True)
        run_interleaved(variants, device, warmup, rounds)
        if mode == "eval":
            expected = variants[1 if ref is not None else 0].step()
            for v in variants:
                if v.checked:
                    v.max_rel_diff = check_equal(expected, v.step(), f"{name} {v.options}")
                elif v.compared:
                    v.max_rel_diff = relative_difference(expected, v.step())
        base = variants[0].times if ref is not None else None
        eager = variants[1 if ref is not None else 0].times
        for v in variants:
            median = statistics.median(v.times)
            ratios = [b / t for b, t in zip(base or [], v.times, strict=False)]
            nan = float("nan")
            rows.append(
                {
                    "device": str(device),
                    "threads": torch.get_num_threads() if device.type == "cpu" else None,
                    "model": name,
                    "mode": mode,
                    "impl": v.impl,
                    "options": v.options,
                    "batch": batch,
                    "rounds": len(v.times),
                    "median_s": median,
                    "img_s": batch / median,
                    "min_s": min(v.times),
                    "max_s": max(v.times),
                    "ratio": statistics.median(ratios) if ratios else nan,
                    "ratio_min": min(ratios, default=nan),
                    "ratio_max": max(ratios, default=nan),
                    "vs_eager": statistics.median(
                        [e / t for e, t in zip(eager, v.times, strict=True)]
                    ),
                    "gflop_per_img": gflop_fwd * factor,
                    "achieved_gflop_s": gflop_fwd * factor * batch / median,
                    "prep_s": v.prep_s,
                    "max_rel_diff": v.max_rel_diff,
                }
            )
    return rows


def devices(requested: list[str]) -> list[torch.device]:
    chosen = []
    for name in requested:
        if name == "cuda" and not torch.cuda.is_available():
            print("CUDA is not available: GPU measurements skipped")
            continue
        chosen.append(torch.device(name))
    return chosen


def configure_inductor(stack: contextlib.ExitStack, freezing: bool) -> None:
    """Cold compilation, so that `prep_s` is the real one-off cost: no inductor cache is
    read (`force_disable_caches`; new files go to a temporary folder removed at the end,
    unless TORCHINDUCTOR_CACHE_DIR is set). For eval, weight freezing (inference graphs
    only: prepacked oneDNN convs with fused ReLU)."""
    import torch._inductor.config as inductor_config

    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="backbone_speed_"))
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        stack.callback(os.environ.pop, "TORCHINDUCTOR_CACHE_DIR")
    stack.enter_context(torch.compiler.config.patch(force_disable_caches=True))
    stack.enter_context(inductor_config.patch(freezing=freezing))


def run_all(args: argparse.Namespace) -> pd.DataFrame:
    """Every device and model; the CSV is rewritten after each model (partial results stay)."""
    refs = {"msdnet_cifar": args.reference_msdnet, "ranet_cifar": args.reference_ranet}
    rows: list[dict[str, Any]] = []
    for device in devices(args.devices):
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # both sides get cuDNN's autotuner
            torch.backends.cudnn.allow_tf32 = False  # fp32 convs, as the fp32 matmul peak
        peaks = [measure_peak(device, args.peak_size, 5)]
        device_rows: list[dict[str, Any]] = []
        for name in args.models:
            device_rows += bench_model(name, refs[name], device, args)
            peaks.append(measure_peak(device, args.peak_size, 5))
            peak = max(peaks)  # the least disturbed measurement of this run so far
            for row in device_rows:
                row["peak_gflop_s"] = peak
                row["peak_frac"] = row["achieved_gflop_s"] / peak
            write_csv(args.out, pd.DataFrame(rows + device_rows))
        measured = ", ".join(f"{p:.1f}" for p in peaks)
        print(
            f"{device}: fp32 matmul peak {max(peaks):.1f} GFLOP/s (n={args.peak_size}; {measured})"
        )
        rows += device_rows
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference-msdnet", type=Path, help="exported kalviny/MSDNet-PyTorch")
    parser.add_argument("--reference-ranet", type=Path, help="exported yangle15/RANet-pytorch")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3, help="training warm-up steps")
    parser.add_argument("--eval-warmup", type=int, default=1, help="eval warm-up forwards")
    parser.add_argument("--train-rounds", type=int, default=10, help="timed training rounds")
    parser.add_argument("--eval-rounds", type=int, default=5, help="timed eval rounds")
    parser.add_argument(
        "--compile",
        nargs="*",
        choices=["train", "eval"],
        help="add torch.compile rows for these modes (all if none named); each costs "
        "minutes of one-off compilation per model on 2 CPU cores",
    )
    parser.add_argument(
        "--amp",
        choices=sorted(AMP_DTYPES),
        help="add mixed-precision rows (autocast in this dtype; compiled too with --compile)",
    )
    parser.add_argument("--peak-size", type=int, default=2048, help="n of the n×n peak matmul")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if min(args.warmup, args.eval_warmup, args.train_rounds, args.eval_rounds) < 1:
        parser.error("warm-up steps and rounds must be >= 1")
    torch.set_num_threads(args.threads)
    if args.compile is None:
        args.compile = []
    elif not args.compile:  # bare --compile: both modes
        args.compile = ["train", "eval"]
    with contextlib.ExitStack() as stack:
        if args.compile:
            configure_inductor(stack, freezing="eval" in args.compile)
        table = run_all(args)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table[SHOWN].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"ratio = median over rounds of t(reference)/t(row); written to {args.out}")
    return table


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:
        # Idle OpenMP threads spin by default; on shared, oversubscribed cores a spinning
        # thread steals the core its partner needs, and 2-thread steps get up to 10× slower.
        # The policy is read when OpenMP starts, so set it and start again.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    main()
