"""Training-epoch time of every train-time baseline against `standard`, through the real engine.

Both methods train `msdnet_fmnist` (10 classes, 1×28×28) on the same data: the first
`--train-images` (2,000) training images of Fashion-MNIST (`--dataset synthetic`: a
synthetic 28×28, 10-class set of the same size, when the files are not installed), batch
64, the `fmnist` recipe (SGD 0.1, cosine; epochs set long enough that the schedule barely
moves), on the CPU with `--threads` (default 1) torch threads. Each method gets its own
`Trainer` (the training loop, with its `Engine`: optimizers, schedules, finite-loss checks)
built from a run config as `tests/pipelines/training/test_train.py::make_run` builds one, and the
timed unit is the Trainer's training loop over one epoch (`Trainer._train_epoch`: batches,
augmentation, learning rates, `method.training_step`, the epoch meter). Validation and
checkpoints are not timed: they cost both methods the same.

How to read it: `standard` is one step on Σ_k CE per batch; `joint_bilevel` makes two
θ-steps on half-batches per batch and, every `phi_interval` (10) batches, two φ-steps
that add two no-grad forwards of half a batch. After one untimed warm-up epoch each, the
methods alternate epoch by epoch (`--repeats` rounds, rotating who goes first); the
table gives median epoch seconds and the ratio is the median over rounds of
t(row)/t(standard) (goals: joint_bilevel <= 1.15, l2w <= 2.0 at its default meta interval
of 1: on each half batch, besides the real step whose forward it shares, a meta step is a
backward for the inner gradient, a forward and a backward at θ′ on the other half and a
forward-mode JVP on the train half). Results go to `benchmarks/results/method_speed.csv`.

`boostnet` is `standard`'s step plus the ensemble's stop-gradient sums and MSDNet's gradient
rescaling; `jei_dnn` trains only its ICs (the backbone's non-final heads) and gates on a
frozen backbone (random here: the cost is the same as on `standard`'s), so its body runs
without autograd; its timed epochs are warm-up epochs (ICs only, the alternating phases
cost about the same).

A third row, `standard_half_batch`, trains `standard` on batches of B/2 (the same images,
twice the steps): it separates what half batches cost on this device (smaller, less
efficient convolutions, twice the optimizer steps) from joint_bilevel's own work
(gater, losses, φ-steps), which is t(joint_bilevel)/t(standard_half_batch).

`--reference-l2w DIR` (an exported LeapLabTHU/L2W-DEN) adds a row `l2w_released`: the
released training loop itself (`tools/main_cifar_DDP.py::train`, imported from DIR, never
copied: per half batch a fresh pseudo-network, its `MetaSGD` virtual step on the
create_graph gradients, the double backward into the weight net, then the real step) over
the same batches (the `l2w` row's loader; contiguous tensors, as the released code has
them, where the suite's step runs the recipe's channels_last) of the same `msdnet_fmnist`,
with the suite's `l2w` settings (ε 0.8, col centring, loss input, 500 hidden, q = 15/20,
meta every batch, Adam 1e-4 wd 1e-4) and the recipe's SGD. The thinnest adapter: the
script's argument parser reads a fixed command line at import, its `models.<arch>` builds
our backbone, the model is wrapped to have DDP's `.module`, `.cuda()` is the identity while
it runs (the code hard-codes CUDA), and its cosine schedule over `epochs` runs to 0 where
ours stops at 1e-3 (same step cost). It prints t(l2w_released)/t(l2w) (goal >= 1.5), the
median over rounds.

    python benchmarks/method_speed.py [--repeats 5 --threads 1 --train-images 2000]
    python benchmarks/method_speed.py --reference-l2w /tmp/L2W-DEN --methods standard l2w
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pandas as pd
import torch
from torch import nn

from eebench.backbones import create_model
from eebench.methods import TRAIN_METHODS
from eebench.pipelines.data.datasets import get_dataset_info
from eebench.pipelines.services.io import write_csv
from eebench.pipelines.training.train import EpochMeter, Trainer
from eebench.pipelines.workflow.config import validate
from eebench.recipes import RECIPES

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "method_speed.csv"
VARIANTS = {  # row name -> (method, divisor of --batch-size)
    "standard": ("standard", 1),
    "standard_half_batch": ("standard", 2),
    "joint_bilevel": ("joint_bilevel", 1),
    "l2w": ("l2w", 1),
    "boostnet": ("boostnet", 1),
    "jei_dnn": ("jei_dnn", 1),
}
BACKBONE = "msdnet_fmnist"
#: Goals of t(method)/t(standard): joint_bilevel's φ-steps are cheap; L2W's exact meta step
#: adds two half-batch backwards, a forward and a forward-mode JVP per half batch.
GOALS = {"joint_bilevel": 1.15, "l2w": 2.0}
RELEASED = "l2w_released"
RELEASED_SCRIPT = Path("tools") / "main_cifar_DDP.py"
RELEASED_GOAL = 1.5  # t(l2w_released) / t(l2w)
NUM_CLASSES = 10


def make_run(method: str, args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    """A complete run config, validated against the run schema, for one method.

    Hyperparameters are the method's defaults for the dataset family (what a study
    without overrides resolves to: joint_bilevel updates φ every 10 batches).
    """
    recipe = RECIPES.get("fmnist").with_overrides({"epochs": 100, "batch_size": batch_size})
    family = get_dataset_info(args.dataset).family
    run: dict[str, Any] = {
        "study": "method_speed",
        "dataset": args.dataset,
        "data_root": str(args.data_root),
        "split_seed": 0,
        "backbone": BACKBONE,
        "activation": "relu",
        "method": method,
        "variant": "",
        "seed": 0,
        "recipe": recipe.to_dict(),
        "hparams": TRAIN_METHODS.get(method).resolve_hparams(family),
        "train_subset": args.train_images,
        "init_from": None,
        "source": None,
        "device": "cpu",
        "num_workers": 0,
        "checkpoint_every_steps": 10**9,  # no checkpoint inside the timed epochs
        "selection": "final",
        "features_subset": 64,
    }
    if args.dataset == "synthetic":
        size = {"n_train": args.train_images, "n_val": 256, "n_test": 256}
        run["synthetic"] = {"num_classes": 10, "image_size": 28, **size}
        run["train_subset"] = None
    validate(run, "run", f"method_speed/{method}")
    return run


def time_epoch(trainer: Trainer, epoch: int) -> float:
    """The Trainer's own loop over one training epoch, without validation or checkpoints."""
    start = time.perf_counter()
    trainer._train_epoch(epoch, 0, EpochMeter(), 10**9, [], {})
    return time.perf_counter() - start


@contextlib.contextmanager
def cuda_as_identity() -> Iterator[None]:
    """`.cuda()` of tensors and modules returns them unchanged, for code that hard-codes CUDA."""
    saved = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved  # type: ignore[method-assign]


def released_argv(trainer: Trainer) -> list[str]:
    """The released script's command line for the suite's `l2w` settings on this run."""
    hp, recipe = trainer.run["hparams"], trainer.recipe
    return [
        str(RELEASED_SCRIPT),
        "--data", "cifar10", "--arch", BACKBONE, "--epochs", str(recipe.epochs),
        "--lr", str(recipe.lr), "--momentum", str(recipe.momentum),
        "--weight-decay", str(recipe.weight_decay),
        "--epsilon", str(hp["epsilon"]), "--constraint_dimension", hp["normalization"],
        "--meta_net_input_type", hp["input"], "--meta_net_hidden_size", str(hp["hidden"]),
        "--meta_net_num_layers", str(hp["num_layers"]),
        "--meta_interval", str(hp["meta_interval"]), "--meta_lr", str(hp["meta_lr"]),
        "--meta_weight_decay", str(hp["meta_weight_decay"]),
        "--target_p_index", str(hp["target_p_index"]), "--print-freq", str(10**9),
    ]  # fmt: skip


def load_released_l2w(repo: Path, argv: list[str]) -> ModuleType:
    """Import the released training script from `repo` (never copied); its argument parser
    runs at import, so it reads `argv`. Our backbone is its only `models` entry."""
    sys.path[:0] = [str(repo), str(repo / "tools")]
    saved_argv, sys.argv = sys.argv, argv
    try:
        spec = importlib.util.spec_from_file_location("_released_l2w", repo / RELEASED_SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.argv = saved_argv
    build = {BACKBONE: lambda args: create_model(BACKBONE, NUM_CLASSES)}
    module.models = SimpleNamespace(**build, MLP_tanh=module.models.MLP_tanh)
    return module


class DataParallelLike(nn.Module):
    """Our backbone behind DDP's `.module`, which the released loop reads its state from."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.module(x)


class ReleasedLoader:
    """One epoch of the suite's training batches as the released loop reads a loader."""

    def __init__(self, trainer: Trainer, epoch: int) -> None:
        self.loader, self.epoch = trainer.loaders.train, epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((x.contiguous(), y) for x, y in self.loader.iterate(self.epoch, 0))


class ReleasedL2W:
    """The released L2W-DEN training loop on our backbone, timed one epoch at a time."""

    def __init__(self, repo: Path, trainer: Trainer) -> None:
        self.trainer = trainer
        self.code = load_released_l2w(repo, released_argv(trainer))
        args = self.code.args
        args.num_exits = trainer.method.ctx.num_exits
        self.model = DataParallelLike(create_model(BACKBONE, NUM_CLASSES))
        self.model.train()
        width = args.num_exits * (2 if args.meta_net_input_type == "both" else 1)
        self.meta_net = self.code.models.MLP_tanh(
            input_size=width,
            hidden_size=args.meta_net_hidden_size,
            num_layers=args.meta_net_num_layers,
            output_size=args.num_exits,
        )
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        )
        self.meta_optimizer = torch.optim.Adam(
            self.meta_net.parameters(), lr=args.meta_lr, weight_decay=args.meta_weight_decay
        )
        self.target_probs = self.code.calc_target_probs(args)[args.target_p_index - 1]

    def epoch(self, epoch: int) -> float:
        """Seconds of the released `train` over one epoch of the suite's batches."""
        loader = ReleasedLoader(self.trainer, epoch)
        start = time.perf_counter()
        with cuda_as_identity():
            self.code.train(
                loader, self.model, self.meta_net, nn.CrossEntropyLoss(), self.optimizer,
                self.meta_optimizer, epoch, self.target_probs, self.code.args,
            )  # fmt: skip
        return time.perf_counter() - start


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked before any model is built (bad input: one line, rc 2)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset", choices=["fashion_mnist", "synthetic"], default="fashion_mnist"
    )
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per method")
    parser.add_argument(
        "--methods", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
        help="rows to time (standard, the ratios' base, is always timed)",
    )  # fmt: skip
    parser.add_argument(
        "--reference-l2w", type=Path, help="exported LeapLabTHU/L2W-DEN: adds l2w_released"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.reference_l2w and not (args.reference_l2w / RELEASED_SCRIPT).is_file():
        parser.error(
            f"--reference-l2w: no {RELEASED_SCRIPT} under {args.reference_l2w}; "
            "give the folder of an exported LeapLabTHU/L2W-DEN"
        )
    args.methods = ["standard"] + [m for m in args.methods if m != "standard"]
    if args.reference_l2w and "l2w" not in args.methods:
        args.methods.append("l2w")
    return args


def time_rounds(epochs: dict[str, Callable[[int], float]], repeats: int) -> dict[str, list[float]]:
    """One untimed warm-up epoch each, then `repeats` rounds, rotating who goes first."""
    for run_epoch in epochs.values():
        run_epoch(0)
    names = list(epochs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for i in range(len(names)):
            name = names[(r + i) % len(names)]
            times[name].append(epochs[name](r + 1))
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
    return times


def per_round(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """t(num)/t(den) in each round."""
    return [a / b for a, b in zip(times[num], times[den], strict=True)]


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name in args.methods:
            method, divisor = VARIANTS[name]
            run = make_run(method, args, args.batch_size // divisor)
            trainers[name] = Trainer(run, Path(tmp) / name, Path(tmp) / "splits")
        epochs: dict[str, Callable[[int], float]] = {
            name: functools.partial(time_epoch, trainer) for name, trainer in trainers.items()
        }
        if args.reference_l2w:
            epochs[RELEASED] = ReleasedL2W(args.reference_l2w, trainers["l2w"]).epoch
        images = trainers["standard"].steps_per_epoch * args.batch_size
        print(
            f"{BACKBONE} on {args.dataset}: {images} images per epoch, batch {args.batch_size}, "
            f"{args.threads} thread(s), {args.repeats} interleaved rounds after 1 warm-up epoch"
        )
        times = time_rounds(epochs, args.repeats)

    names = list(times)
    rows = [
        {
            "backbone": BACKBONE,
            "dataset": args.dataset,
            "train_images": images,
            "batch_size": args.batch_size // VARIANTS.get(name, ("", 1))[1],
            "threads": args.threads,
            "method": name,
            "rounds": args.repeats,
            "median_epoch_s": statistics.median(times[name]),
            "min_epoch_s": min(times[name]),
            "images_per_s": images / statistics.median(times[name]),
            "ratio_vs_standard": statistics.median(per_round(times, name, "standard")),
        }
        for name in names
    ]
    table = pd.DataFrame(rows)
    write_csv(args.out, table)
    show = table[["method", "median_epoch_s", "min_epoch_s", "images_per_s", "ratio_vs_standard"]]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, goal in GOALS.items():
        if name in times:
            ratios = per_round(times, name, "standard")
            verdict = "meets" if statistics.median(ratios) <= goal else "misses"
            print(
                f"{name} / standard = {statistics.median(ratios):.3f} (median of per-round "
                f"ratios {', '.join(f'{v:.3f}' for v in ratios)}): {verdict} the goal <= {goal}"
            )
    if {"joint_bilevel", "standard_half_batch"} <= set(times):
        half = statistics.median(per_round(times, "standard_half_batch", "standard"))
        own = statistics.median(per_round(times, "joint_bilevel", "standard_half_batch"))
        print(
            f"of which half batches: standard_half_batch / standard = {half:.3f}; "
            f"joint_bilevel's own work: joint_bilevel / standard_half_batch = {own:.3f}"
        )
    if RELEASED in times:
        ratios = per_round(times, RELEASED, "l2w")
        verdict = "meets" if statistics.median(ratios) >= RELEASED_GOAL else "misses"
        print(
            f"{RELEASED} / l2w = {statistics.median(ratios):.3f} (median of per-round ratios "
            f"{', '.join(f'{v:.3f}' for v in ratios)}): the suite's step is that much faster "
            f"than the released one; {verdict} the goal >= {RELEASED_GOAL}"
        )
    print(f"written to {args.out}")
    return table


if __name__ == "__main__":
    main()
