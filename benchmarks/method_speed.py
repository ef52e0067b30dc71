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

    python benchmarks/method_speed.py [--repeats 5 --threads 1 --train-images 2000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

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


def main(argv: list[str] | None = None) -> pd.DataFrame:
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
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for name, (method, divisor) in VARIANTS.items():
            run = make_run(method, args, args.batch_size // divisor)
            trainers[name] = Trainer(run, Path(tmp) / name, Path(tmp) / "splits")
        images = trainers["standard"].steps_per_epoch * args.batch_size
        print(
            f"{BACKBONE} on {args.dataset}: {images} images per epoch, batch {args.batch_size}, "
            f"{args.threads} thread(s), {args.repeats} interleaved rounds after 1 warm-up epoch"
        )
        for trainer in trainers.values():
            time_epoch(trainer, 0)
        names = list(VARIANTS)
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.repeats):
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                times[name].append(time_epoch(trainers[name], r + 1))
            print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))

    ratios = {
        name: [t / s for s, t in zip(times["standard"], times[name], strict=True)] for name in names
    }
    rows = [
        {
            "backbone": BACKBONE,
            "dataset": args.dataset,
            "train_images": images,
            "batch_size": args.batch_size // VARIANTS[name][1],
            "threads": args.threads,
            "method": name,
            "rounds": args.repeats,
            "median_epoch_s": statistics.median(times[name]),
            "min_epoch_s": min(times[name]),
            "images_per_s": images / statistics.median(times[name]),
            "ratio_vs_standard": statistics.median(ratios[name]),
        }
        for name in names
    ]
    table = pd.DataFrame(rows)
    write_csv(args.out, table)
    show = table[["method", "median_epoch_s", "min_epoch_s", "images_per_s", "ratio_vs_standard"]]
    print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for name, goal in GOALS.items():
        ratio = statistics.median(ratios[name])
        verdict = "meets" if ratio <= goal else "misses"
        print(
            f"{name} / standard = {ratio:.3f} (median of per-round ratios "
            f"{', '.join(f'{v:.3f}' for v in ratios[name])}): {verdict} the goal <= {goal}"
        )
    own = statistics.median(
        j / h for j, h in zip(times["joint_bilevel"], times["standard_half_batch"], strict=True)
    )
    print(
        f"of which half batches: standard_half_batch / standard = "
        f"{statistics.median(ratios['standard_half_batch']):.3f}; joint_bilevel's own work: "
        f"joint_bilevel / standard_half_batch = {own:.3f}"
    )
    print(f"written to {args.out}")
    return table


if __name__ == "__main__":
    main()
