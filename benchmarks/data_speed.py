"""Speed of the batched uint8 augmentation path against a per-image PIL pipeline.

Both serve Fashion-MNIST training batches of 64 on the CPU with 2 torch threads: the
suite's InMemoryLoader (random crop with zero padding 2 on whole uint8 batches, then
normalisation) and the usual torchvision recipe (per image: PIL image, RandomCrop(28,
padding=2), ToTensor, Normalize; collated by a DataLoader without workers). Each is timed
as the best of a few repeats. The script prints images/s and the ratio and writes them to
`benchmarks/results/data_speed.csv`.

On a shared machine, 2 torch threads on small tensors are very sensitive to other busy
processes (the second thread waits for a core); compare with --threads 1.

    python benchmarks/data_speed.py [--batches 200 --repeats 3 --threads 2 --data-root data]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from eebench.pipelines.data.loaders import build_loaders
from eebench.pipelines.services.io import write_csv

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_speed.csv"
BATCH = 64


class PilFashionMNIST(Dataset):
    """What torchvision's FashionMNIST does per item: uint8 array → PIL → transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: T.Compose) -> None:
        self.images, self.labels, self.transform = images.numpy(), labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = Image.fromarray(self.images[index, 0], mode="L")
        return self.transform(image), self.labels[index]


def images_per_second(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int) -> float:
    """Throughput over the first n batches (after 3 warm-up batches)."""
    iterator = iter(batches)
    for _ in islice(iterator, 3):
        pass
    start = time.perf_counter()
    count = sum(len(x) for x, _ in islice(iterator, n))
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as split_dir:
        loaders = build_loaders(
            "fashion_mnist",
            data_root=args.data_root,
            split_dir=split_dir,
            seed=0,
            batch_size=BATCH,
            eval_batch_size=256,
        )
    train, info = loaders.train, loaders.info
    pil_recipe = T.Compose(
        [
            T.RandomCrop(info.image_size, padding=info.crop_padding),
            T.ToTensor(),
            T.Normalize(info.mean, info.std),
        ]
    )
    index = train.indices
    pil_loader = DataLoader(
        PilFashionMNIST(train.images[index], train.labels[index], pil_recipe),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
    )
    batched = max(images_per_second(train.iterate(r), args.batches) for r in range(args.repeats))
    per_image = max(images_per_second(pil_loader, args.batches) for _ in range(args.repeats))
    rows = pd.DataFrame(
        [
            {"path": "batched_uint8", "threads": args.threads, "images_per_s": round(batched)},
            {"path": "per_image_pil", "threads": args.threads, "images_per_s": round(per_image)},
        ]
    )
    write_csv(args.out, rows)
    print(rows.to_string(index=False))
    ratio = batched / per_image
    print(f"batched / per-image: {ratio:.1f}x (batch {BATCH}, CPU, {args.threads} threads)")
    return rows


if __name__ == "__main__":
    main()
