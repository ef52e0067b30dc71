"""Loaders with resumable, deterministic batch order, built on a protocol split.

Every loader has the same interface, `len(loader)` batches per epoch and
`loader.iterate(epoch, start_batch=0)` yielding (x float32 normalised, y int64) on the
target device. The sample order and the augmentation randomness of a batch are a pure
function of (seed, epoch, batch index), so a run resumed at `start_batch` gets exactly the
batches the uninterrupted run would have got. A `sharded` training loader serves one
data-parallel rank its contiguous part of each of those batches, augmented as in the
whole batch, so the ranks together see exactly what one process sees.

Deliberate difference from the reference code: val is served with TEST-time transforms.
The MSDNet/L2W/seed-paper code draws its val (or threshold-fitting) images from the
training dataset object, so thresholds are fitted on augmented images; here val, test and
`train_eval` (the train split without augmentation, for post-hoc methods) are never
augmented.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from eebench.pipelines.data.augment import (
    AUGMENTS,
    derive_seed,
    imagenet_transforms,
    make_batch_transform,
    seeded_global_rngs,
)
from eebench.pipelines.data.datasets import DatasetInfo, FolderData, InMemoryData, load_dataset
from eebench.pipelines.data.splits import Split, get_split

_PERMUTATION = 0  # stream tags for derive_seed
_BATCH = 1


def _epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> Tensor:
    """Positions in the order of the epoch: a seeded permutation, or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, _PERMUTATION))
    return torch.randperm(n, generator=generator)


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def _check_start(start_batch: int, num_batches: int) -> None:
    if not 0 <= start_batch <= num_batches:
        raise ValueError(f"start_batch must be in 0..{num_batches}, got {start_batch}")


class _SplitLoader:
    """What both loaders share: a split part (`indices`) served in batches, epoch by epoch;
    rank `rank` of `world_size` gets its part of every batch (the whole batch by default)."""

    indices: Any
    batch_size: int
    drop_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        return _num_batches(self.num_samples, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iterate(0)

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def sharded(self, rank: int, world_size: int) -> Self:
        """This loader for data-parallel rank `rank` of `world_size`: the same batches (same
        order, same augmentation), of which the rank gets its contiguous part; the batches
        must split evenly (drop_last, batch_size a multiple of `world_size`)."""
        if world_size > 1 and (self.batch_size % world_size or not self.drop_last):
            raise ValueError(
                f"batches of {self.batch_size} do not split evenly over {world_size} "
                "processes: make the recipe's batch_size a multiple of the number of processes"
            )
        shard = copy.copy(self)
        shard.rank, shard.world_size = rank, world_size
        return shard

    def _part(self) -> slice:
        """The rank's rows of a batch (all of them in one process, the last batch too)."""
        size = self.batch_size // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)


class InMemoryLoader(_SplitLoader):
    """Batches of uint8 images held on the device, augmented as whole batches.

    `images`/`labels` are the full official set (shared by the loaders built on it);
    `indices` selects this loader's samples (a split part).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: np.ndarray,
        *,
        batch_size: int,
        transform: Callable[[Tensor, int], Tensor],  # (uint8 batch, seed) -> float batch
        seed: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> None:
        self.images, self.labels = images, labels
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.batch_size, self.transform = batch_size, transform
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches start_batch..len-1 of `epoch` (identical to those of a full iteration)."""
        _check_start(start_batch, len(self))
        order = _epoch_order(self.num_samples, self.shuffle, self.seed, epoch)
        device = self.images.device
        for batch in range(start_batch, len(self)):
            positions = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            index = self.indices[positions].to(device)
            x = self.transform(self.images[index], derive_seed(self.seed, epoch, batch, _BATCH))
            part = self._part()
            yield x[part], self.labels[index][part]


class _SeededSamples(Dataset):
    """Reads (index, sample_seed) keys: each sample's transform randomness comes from its
    own seed, whichever worker loads it, so the batches do not depend on num_workers."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, sample_seed = key
        with seeded_global_rngs(sample_seed):
            return self.base[index]


class _SeededBatches:
    """Batch sampler of one epoch from `start_batch` on: lists of (index, sample seed)."""

    def __init__(self, loader: FolderLoader, epoch: int, start_batch: int) -> None:
        self.loader, self.epoch, self.start_batch = loader, epoch, start_batch

    def __len__(self) -> int:
        return len(self.loader) - self.start_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        loader, size = self.loader, self.loader.batch_size
        order = _epoch_order(loader.num_samples, loader.shuffle, loader.seed, self.epoch)
        for batch in range(self.start_batch, len(loader)):
            base_seed = derive_seed(loader.seed, self.epoch, batch, _BATCH)
            positions = order[batch * size : (batch + 1) * size]
            keys = [
                (int(loader.indices[p]), (base_seed + j) % 2**63)
                for j, p in enumerate(positions.tolist())
            ]
            yield keys[loader._part()]


class FolderLoader(_SplitLoader):
    """ImageNet-style loader (PIL transforms in DataLoader workers) with the interface of
    InMemoryLoader: a seeded per-epoch permutation, batches skippable by `start_batch`."""

    def __init__(
        self,
        dataset: Any,  # ImageFolder with its transform set
        indices: np.ndarray,
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = False,
        drop_last: bool = False,
        num_workers: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.seed = batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_workers, self.device = num_workers, torch.device(device)

    def iterate(self, epoch: int = 0, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches start_batch..len-1 of `epoch` (identical to those of a full iteration)."""
        _check_start(start_batch, len(self))
        cuda = self.device.type == "cuda"
        loader = DataLoader(
            _SeededSamples(self.dataset),
            batch_sampler=_SeededBatches(self, epoch, start_batch),
            num_workers=self.num_workers,
            pin_memory=cuda,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)


DataLoaderLike = InMemoryLoader | FolderLoader


@dataclass(frozen=True)
class Loaders:
    """Everything the training loop and the post-hoc methods read.

    `split` is the split actually used (after train_subset). `easy` (synthetic only) flags
    the strong-signal samples of val, test and train_eval, in loader order.
    """

    train: DataLoaderLike
    val: DataLoaderLike
    test: DataLoaderLike
    train_eval: DataLoaderLike
    info: DatasetInfo
    split: Split
    easy: dict[str, np.ndarray] | None = None


def build_loaders(
    dataset: str,
    *,
    data_root: str | Path,
    split_dir: str | Path,
    seed: int,
    batch_size: int,
    eval_batch_size: int,
    train_subset: int | None = None,
    train_eval_subset: int | None = None,
    augment: str = "standard",
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    synthetic_kwargs: dict[str, Any] | None = None,
    download: bool = False,
    split_seed: int = 0,
    crop_padding: int | None = None,
    hflip: bool | None = None,
    n_val: int | None = None,
) -> Loaders:
    """Loaders of train (augmented, shuffled, drop_last), val/test/train_eval (plain).

    `seed` drives batch order and augmentation; `split_seed` (default 0) picks the split,
    shared by all runs. `crop_padding`/`hflip` override the dataset's defaults. `n_val`
    overrides the protocol's val size, for tiny test replicas only.
    """
    if augment not in AUGMENTS:  # before any loading
        raise ValueError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
    if synthetic_kwargs and dataset != "synthetic":
        raise ValueError("synthetic_kwargs only apply to the synthetic dataset")
    data = load_dataset(dataset, data_root, download, **(synthetic_kwargs or {}))
    info = data.info
    split = get_split(
        dataset, split_dir, split_seed, info.n_train_total, info.n_val if n_val is None else n_val
    ).take_train(train_subset)
    eval_split = split.take_train(train_eval_subset)
    if len(split.train_idx) < batch_size:
        raise ValueError(
            f"{len(split.train_idx)} training samples: fewer than one batch of {batch_size}"
        )
    batching = _Batching(seed, batch_size, eval_batch_size, augment, torch.device(device))
    if isinstance(data, InMemoryData):
        padding = info.crop_padding if crop_padding is None else crop_padding
        flip = info.hflip if hflip is None else hflip
        loaders = _in_memory_loaders(data, split, eval_split, batching, padding, flip)
    else:
        loaders = _folder_loaders(data, split, eval_split, batching, num_workers)
    return Loaders(*loaders, info=info, split=split, easy=_easy_masks(data, split, eval_split))


@dataclass(frozen=True)
class _Batching:
    """The build_loaders settings that every loader builder needs."""

    seed: int
    batch_size: int
    eval_batch_size: int
    augment: str
    device: torch.device


def _in_memory_loaders(
    data: InMemoryData,
    split: Split,
    eval_split: Split,
    batching: _Batching,
    padding: int,
    hflip: bool,
) -> tuple[InMemoryLoader, ...]:
    info, device = data.info, batching.device
    common = dict(image_size=info.image_size, mean=info.mean, std=info.std, device=device)
    train_tf = make_batch_transform(
        augment=batching.augment, padding=padding, hflip=hflip, **common
    )
    plain = make_batch_transform(augment="none", padding=0, hflip=False, **common)
    train_x, train_y = data.train_images.to(device), data.train_labels.to(device)
    test_x, test_y = data.test_images.to(device), data.test_labels.to(device)

    def plain_loader(images: Tensor, labels: Tensor, indices: np.ndarray) -> InMemoryLoader:
        return InMemoryLoader(
            images, labels, indices, batch_size=batching.eval_batch_size, transform=plain
        )

    train = InMemoryLoader(
        train_x,
        train_y,
        split.train_idx,
        batch_size=batching.batch_size,
        transform=train_tf,
        seed=batching.seed,
        shuffle=True,
        drop_last=True,
    )
    return (
        train,
        plain_loader(train_x, train_y, split.val_idx),
        plain_loader(test_x, test_y, np.arange(len(test_y))),
        plain_loader(train_x, train_y, eval_split.train_idx),
    )


def _folder_loaders(
    data: FolderData, split: Split, eval_split: Split, batching: _Batching, num_workers: int
) -> tuple[FolderLoader, ...]:
    info = data.info
    train_tf, test_tf = imagenet_transforms(batching.augment, info.image_size, info.mean, info.std)
    train_aug = _with_transform(data.train, train_tf)
    train_plain = _with_transform(data.train, test_tf)
    test = _with_transform(data.test, test_tf)

    def plain_loader(dataset: Any, indices: np.ndarray) -> FolderLoader:
        return FolderLoader(
            dataset,
            indices,
            batch_size=batching.eval_batch_size,
            num_workers=num_workers,
            device=batching.device,
        )

    train = FolderLoader(
        train_aug,
        split.train_idx,
        batch_size=batching.batch_size,
        seed=batching.seed,
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        device=batching.device,
    )
    return (
        train,
        plain_loader(train_plain, split.val_idx),
        plain_loader(test, np.arange(len(test))),
        plain_loader(train_plain, eval_split.train_idx),
    )


def _with_transform(folder_dataset: Any, transform: Any) -> Any:
    """A shallow copy with its own transform; the (large) sample list is shared."""
    clone = copy.copy(folder_dataset)
    clone.transform = transform
    return clone


def _easy_masks(
    data: InMemoryData | FolderData, split: Split, eval_split: Split
) -> dict[str, np.ndarray] | None:
    if not isinstance(data, InMemoryData) or data.train_easy is None or data.test_easy is None:
        return None
    return {
        "val": data.train_easy[split.val_idx],
        "test": data.test_easy,
        "train_eval": data.train_easy[eval_split.train_idx],
    }
