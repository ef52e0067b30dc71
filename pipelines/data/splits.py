"""Protocol splits: which official training images are train and which are val.

A split (docs/protocol.md, "Data splits") is a seeded random permutation of the official
training set, written once to `<split_dir>/<dataset>_split_seed<seed>.npz` and read back
by every later run, so every method sees the same val set. The last `n_val` indices of
the permutation are val (5,000 for Fashion-MNIST and CIFAR, 50,000 for ImageNet), the
rest train; test is the official test set (ImageNet: the official val set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eebench.pipelines.data.datasets import get_dataset_info
from eebench.pipelines.services.io import write_npz


class SplitFileError(ValueError):
    """A split file is unreadable or inconsistent; the message names it and says what to do."""


@dataclass(frozen=True)
class Split:
    """Indices into the official training set: train and val (disjoint)."""

    train_idx: np.ndarray
    val_idx: np.ndarray

    def take_train(self, n: int | None) -> Split:
        """Keep only the first n train indices (fast studies); val is unchanged."""
        if n is None:
            return self
        if not 0 < n <= len(self.train_idx):
            raise ValueError(f"train_subset must be in 1..{len(self.train_idx)}, got {n}")
        return Split(self.train_idx[:n], self.val_idx)


def split_path(dataset: str, split_dir: str | Path, seed: int, n_total: int, n_val: int) -> Path:
    """File of a split. Sizes other than the registered ones (synthetic, tiny replicas) are
    part of the name so that they never collide with the protocol's split."""
    info = get_dataset_info(dataset)
    sizes = (
        "" if (n_total, n_val) == (info.n_train_total, info.n_val) else f"_n{n_total}_val{n_val}"
    )
    return Path(split_dir) / f"{dataset}{sizes}_split_seed{seed}.npz"


def get_split(
    dataset: str,
    split_dir: str | Path,
    seed: int = 0,
    n_train_total: int | None = None,
    n_val: int | None = None,
) -> Split:
    """The protocol split of `dataset`: read from its file, or drawn and written once.

    n_train_total and n_val default to the registered sizes (docs/protocol.md).
    """
    info = get_dataset_info(dataset)
    n_total = info.n_train_total if n_train_total is None else n_train_total
    n_val = info.n_val if n_val is None else n_val
    if not 0 < n_val < n_total:
        raise ValueError(f"{dataset}: n_val={n_val} must be in 1..{n_total - 1}")
    path = split_path(dataset, split_dir, seed, n_total, n_val)
    if path.exists():
        return _read_split(path, dataset, seed, n_total, n_val)
    permutation = np.random.default_rng(seed).permutation(n_total).astype(np.int64)
    split = Split(permutation[: n_total - n_val], permutation[n_total - n_val :])
    write_npz(
        path,
        train=split.train_idx,
        val=split.val_idx,
        seed=np.int64(seed),
        dataset=np.str_(dataset),
    )
    return split


def _read_split(path: Path, dataset: str, seed: int, n_total: int, n_val: int) -> Split:
    try:
        with np.load(path, allow_pickle=False) as stored:
            train, val = stored["train"], stored["val"]
            made_for = (str(stored["dataset"]), int(stored["seed"]))
    except Exception as exc:  # truncated zip, missing key, garbage: all mean "corrupted"
        raise _split_error(path, f"unreadable: {type(exc).__name__}: {exc}") from None
    problem = _split_problem(train, val, n_total, n_val)
    if made_for != (dataset, seed):
        problem = (
            f"it was drawn for {made_for[0]} with seed {made_for[1]}, not {dataset} seed {seed}"
        )
    if problem:
        raise _split_error(path, problem)
    return Split(train.astype(np.int64), val.astype(np.int64))


def _split_problem(train: np.ndarray, val: np.ndarray, n_total: int, n_val: int) -> str:
    """What is wrong with stored split indices ('' if nothing)."""
    if (
        train.ndim != 1
        or val.ndim != 1
        or not (np.issubdtype(train.dtype, np.integer) and np.issubdtype(val.dtype, np.integer))
    ):
        return "indices are not 1-D integer arrays"
    if len(val) != n_val or len(train) != n_total - n_val:
        return f"sizes {len(train)}/{len(val)}, expected {n_total - n_val}/{n_val}"
    both = np.concatenate([train, val])
    if both.min() < 0 or both.max() >= n_total:
        return f"indices outside 0..{n_total - 1}"
    if len(np.unique(both)) != n_total:
        return "train and val overlap or repeat indices"
    return ""


def _split_error(path: Path, problem: str) -> SplitFileError:
    return SplitFileError(
        f"split file {path} is corrupted or does not match the dataset ({problem}). "
        "Delete it to draw and write it again; runs made with the old file then no longer "
        "share their val set with new runs."
    )
