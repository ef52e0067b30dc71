"""Dataset registry and raw loaders: where each dataset lives, how to read it, how to get it.

Small datasets (Fashion-MNIST, CIFAR, synthetic) are read whole into uint8 tensors
(N×C×H×W), because augmenting whole batches on the device is far faster than a per-image
PIL pipeline; ImageNet stays a torchvision ImageFolder read by a DataLoader.

Every loader first checks that all its files exist and otherwise raises
`DatasetNotFoundError`, whose one message lists every place it looked and the command that
gets the data, before anything slow happens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from eebench.pipelines.services.registry import Registry

Family = Literal["fmnist", "cifar", "imagenet", "synthetic"]

FMNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Where Debian's package `dataset-fashion-mnist` installs the original files (a module
# constant so that tests can point it elsewhere).
FMNIST_SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetNotFoundError(FileNotFoundError):
    """The data is in none of the places looked at; the message says how to get it."""


class DatasetFormatError(ValueError):
    """A data file exists but is truncated or not in the expected format."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the suite needs to know about a dataset, and how to load it.

    `family` lets methods pick default hyperparameters; `crop_padding` and `hflip` are the
    defaults of the standard augmentation recipe; `n_val` is the protocol's val size.
    """

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    family: Family
    n_train_total: int
    n_val: int
    n_test: int
    crop_padding: int
    hflip: bool
    label: str  # how figures and captions name it
    # locate(root, download) -> folder holding the files (None: generated in memory);
    # raises DatasetNotFoundError. load(folder, **kwargs) -> InMemoryData | FolderData.
    locate: Callable[[Path, bool], Path | None] = field(repr=False, compare=False)
    load: Callable[..., InMemoryData | FolderData] = field(repr=False, compare=False)

    @property
    def in_memory(self) -> bool:
        return self.family != "imagenet"


@dataclass(frozen=True)
class InMemoryData:
    """Official train and test sets held whole as uint8 N×C×H×W images and int64 labels.

    `train_easy` / `test_easy` flag the strong-signal samples of the synthetic dataset.
    """

    info: DatasetInfo
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    train_easy: np.ndarray | None = None
    test_easy: np.ndarray | None = None


@dataclass(frozen=True)
class FolderData:
    """ImageFolder datasets (without transforms yet) of the official train and val sets."""

    info: DatasetInfo
    train: Any  # torchvision.datasets.ImageFolder
    test: Any


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def get_dataset_info(name: str) -> DatasetInfo:
    """The registered info of `name`; an unknown name lists the registered ones."""
    return DATASETS.get(name)


def load_dataset(
    name: str, root: str | Path, download: bool = False, **kwargs: Any
) -> InMemoryData | FolderData:
    """Locate (and, if allowed, download) then read a dataset. kwargs go to the synthetic one."""
    info = get_dataset_info(name)
    return info.load(info.locate(Path(root), download), **kwargs)


def prepare_dataset(name: str, root: str | Path, download: bool = False) -> str:
    """For `eebench data NAME`: make sure the data is there; say where it was found."""
    info = get_dataset_info(name)
    folder = info.locate(Path(root), download)
    if folder is None:
        return f"{name}: generated in memory from a seed, nothing to prepare"
    return f"{name}: found in {folder}"


def _not_found(
    name: str, looked_in: Sequence[str], how_to_get: Sequence[str], note: str = ""
) -> DatasetNotFoundError:
    lines = [f"dataset {name!r} not found. Looked in:"]
    lines += [f"  - {place}" for place in looked_in]
    lines.append("Get it with:")
    lines += [f"  {how}" for how in how_to_get]
    if note:
        lines.append(note)
    return DatasetNotFoundError("\n".join(lines))


def _try_download(fetch: Callable[[], object]) -> str:
    """Run a torchvision download; return '' on success, else why it failed (no network...)."""
    try:
        fetch()
    except Exception as exc:  # any failure (offline, checksum, disk) becomes part of the message
        return f"The download attempt failed: {type(exc).__name__}: {exc}"
    return ""


# ----------------------------------------------------------------------------- Fashion-MNIST


def _fmnist_dirs(root: Path) -> list[Path]:
    return [root / "fashion_mnist", root / "FashionMNIST" / "raw", *FMNIST_SYSTEM_DIRS]


def _idx_path(folder: Path, stem: str) -> Path | None:
    """The raw or gzipped idx file `stem` in `folder`, if present."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate_fmnist(root: Path, download: bool) -> Path:
    for folder in _fmnist_dirs(root):
        if all(_idx_path(folder, stem) for stem in FMNIST_FILES):
            return folder
    note = ""
    if download:
        from torchvision.datasets import FashionMNIST

        note = _try_download(lambda: FashionMNIST(str(root), train=True, download=True))
        if not note:
            return root / "FashionMNIST" / "raw"
    raise _not_found(
        "fashion_mnist",
        [str(folder) for folder in _fmnist_dirs(root)],
        [
            "apt-get install dataset-fashion-mnist   (Debian; installs the original gz files)",
            f"eebench data fashion_mnist --download --root {root}   (torchvision, needs network)",
        ],
        f"Each place must hold {', '.join(FMNIST_FILES)} (raw idx or .gz). {note}".rstrip(),
    )


def cache_dir() -> Path:
    """Where decompressed copies are kept: $EEBENCH_CACHE_DIR, else $XDG_CACHE_HOME/eebench,
    else ~/.cache/eebench."""
    if os.environ.get("EEBENCH_CACHE_DIR"):
        return Path(os.environ["EEBENCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eebench"


def _decompress(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(
            f"{path} is not a complete gzip file ({error}); delete it and get it again"
        ) from None


def gunzipped_bytes(path: Path) -> bytes:
    """The decompressed content of `path`, from a copy in `cache_dir()` made by the first
    job that read it: decompressing Fashion-MNIST took ~1 s of every study job. The copy is
    keyed by the source's path, size and mtime, so a replaced file is decompressed again; a
    cache that cannot be written only costs the time."""
    stat = path.stat()
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    cached = cache_dir() / "idx" / f"{path.stem}.{key}.{stat.st_size}.{stat.st_mtime_ns}"
    if cached.is_file():
        return cached.read_bytes()
    raw = _decompress(path)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(raw)
        partial.replace(cached)  # atomic: a concurrent job reads a whole copy or none
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink()
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Read a (possibly gzipped) uint8 idx file into an array of its stated shape."""
    raw = gunzipped_bytes(path) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DatasetFormatError(f"{path} is not a uint8 idx file; delete it and get it again")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(bytearray(raw), np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetFormatError(
            f"{path} is truncated ({data.size} values for shape {shape}); "
            "delete it and get it again"
        )
    return data.reshape(shape)


def _load_fmnist(folder: Path) -> InMemoryData:
    images_train, labels_train, images_test, labels_test = (
        read_idx(_idx_path(folder, stem))
        for stem in FMNIST_FILES  # type: ignore[arg-type]
    )
    return InMemoryData(
        info=_with_train_size(FASHION_MNIST, len(labels_train)),
        train_images=torch.from_numpy(images_train).unsqueeze(1),
        train_labels=torch.from_numpy(labels_train.astype(np.int64)),
        test_images=torch.from_numpy(images_test).unsqueeze(1),
        test_labels=torch.from_numpy(labels_test.astype(np.int64)),
    )


def _with_train_size(info: DatasetInfo, n_train_total: int) -> DatasetInfo:
    """The info with the size of the training set actually found (tiny test replicas)."""
    if n_train_total == info.n_train_total:
        return info
    return dataclasses.replace(info, n_train_total=n_train_total)


# ----------------------------------------------------------------------------- CIFAR

_CIFAR_LAYOUT = {
    # name: (folder, train files, test files, label key) — torchvision's python layout
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def _locate_cifar(name: str, root: Path, download: bool) -> Path:
    folder_name, train_files, test_files, _ = _CIFAR_LAYOUT[name]
    folder = root / folder_name
    archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"

    def complete() -> bool:
        return all((folder / f).is_file() for f in train_files + test_files)

    if complete():
        return folder
    note = ""
    if download:
        from torchvision import datasets

        dataset_cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        note = _try_download(lambda: dataset_cls(str(root), train=True, download=True))
        if complete():
            return folder
    raise _not_found(
        name,
        [f"{folder} (files {', '.join(train_files + test_files)})"],
        [
            f"eebench data {name} --download --root {root}   (torchvision, needs network)",
            f"or extract {archive} (the {folder_name}/ folder) into {root}",
        ],
        note,
    )


def _read_cifar_files(folder: Path, files: list[str], label_key: str) -> tuple[Tensor, Tensor]:
    images, labels = [], []
    for file_name in files:
        path = folder / file_name
        with path.open("rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(entry[label_key]) != len(data):
            raise DatasetFormatError(
                f"{path} is not a CIFAR python batch; delete it and get it again"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(entry[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _load_cifar(info: DatasetInfo, folder: Path) -> InMemoryData:
    _, train_files, test_files, label_key = _CIFAR_LAYOUT[info.name]
    train_images, train_labels = _read_cifar_files(folder, train_files, label_key)
    test_images, test_labels = _read_cifar_files(folder, test_files, label_key)
    return InMemoryData(
        _with_train_size(info, len(train_labels)),
        train_images,
        train_labels,
        test_images,
        test_labels,
    )


# ----------------------------------------------------------------------------- ImageNet


def _locate_imagenet(root: Path, download: bool) -> Path:
    folder = root / "imagenet"
    if (folder / "train").is_dir() and (folder / "val").is_dir():
        return folder
    note = "ImageNet cannot be downloaded automatically (licence)." if download else ""
    raise _not_found(
        "imagenet",
        [f"{folder / 'train'} and {folder / 'val'} (torchvision ImageFolder layout)"],
        [
            "register at image-net.org, download ILSVRC2012 train and val, and lay them out as",
            f"  {folder}/train/<wnid>/*.JPEG   (1000 class folders, 1,281,167 images)",
            f"  {folder}/val/<wnid>/*.JPEG     (the 50,000 val images in the same class",
            "  folders, e.g. sorted with the usual valprep.sh script)",
        ],
        note,
    )


def _load_imagenet(folder: Path) -> FolderData:
    from torchvision.datasets import ImageFolder

    train, test = ImageFolder(str(folder / "train")), ImageFolder(str(folder / "val"))
    if train.class_to_idx != test.class_to_idx:
        raise DatasetFormatError(
            f"{folder}/train and {folder}/val have different class folders; fix the layout"
        )
    info = dataclasses.replace(IMAGENET, num_classes=len(train.classes), n_test=len(test))
    return FolderData(_with_train_size(info, len(train)), train, test)


# ----------------------------------------------------------------------------- synthetic


def make_synthetic(
    *,
    num_classes: int = 4,
    image_size: int = 8,
    in_chans: int = 1,
    n_train: int = 512,
    n_val: int = 128,
    n_test: int = 256,
    easy_fraction: float = 0.5,
    seed: int = 0,
) -> InMemoryData:
    """Tiny learnable dataset with easy and hard samples, for fast tests of training and exits.

    Each class has a fixed random pattern; an image is grey + amplitude·pattern + noise. Easy
    samples carry the pattern at full amplitude (a linear model gets them right), hard ones
    at 15% (mostly below the noise), so a gater should let easy samples leave early.
    """
    rng = np.random.default_rng(seed)
    shape = (in_chans, image_size, image_size)
    patterns = rng.standard_normal((num_classes, *shape))
    patterns /= np.sqrt((patterns**2).mean(axis=(1, 2, 3), keepdims=True))
    n_total = n_train + n_val + n_test
    labels = rng.permutation(np.arange(n_total) % num_classes)
    easy = rng.random(n_total) < easy_fraction
    amplitude = np.where(easy, 1.0, 0.15)[:, None, None, None]
    noise = rng.standard_normal((n_total, *shape))
    images = np.clip(np.rint(128 + 40 * (amplitude * patterns[labels] + noise)), 0, 255)
    images_t = torch.from_numpy(images.astype(np.uint8))
    labels_t = torch.from_numpy(labels.astype(np.int64))
    n_official = n_train + n_val
    info = dataclasses.replace(
        SYNTHETIC,
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=image_size,
        mean=(0.5,) * in_chans,
        std=(0.2,) * in_chans,
        n_train_total=n_official,
        n_val=n_val,
        n_test=n_test,
    )
    return InMemoryData(
        info,
        images_t[:n_official],
        labels_t[:n_official],
        images_t[n_official:],
        labels_t[n_official:],
        train_easy=easy[:n_official],
        test_easy=easy[n_official:],
    )


def _register(info: DatasetInfo) -> DatasetInfo:
    DATASETS.register(info.name)(info)
    return info


FASHION_MNIST = _register(
    DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        in_chans=1,
        image_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        family="fmnist",
        n_train_total=60_000,
        n_val=5_000,
        n_test=10_000,
        crop_padding=2,
        hflip=False,
        label="Fashion-MNIST",
        locate=_locate_fmnist,
        load=_load_fmnist,
    )
)
# Normalisation of the MSDNet reference code (true per-channel statistics). The seed paper's
# timm recipe uses CIFAR-10 std (0.2023, 0.1994, 0.2010) instead; the difference is a fixed
# affine rescaling of the input that BatchNorm absorbs.
CIFAR10 = _register(
    DatasetInfo(
        name="cifar10",
        num_classes=10,
        in_chans=3,
        image_size=32,
        mean=(0.4914, 0.4824, 0.4467),
        std=(0.2471, 0.2435, 0.2616),
        family="cifar",
        n_train_total=50_000,
        n_val=5_000,
        n_test=10_000,
        crop_padding=4,
        hflip=True,
        label="CIFAR-10",
        locate=lambda root, download: _locate_cifar("cifar10", root, download),
        load=lambda folder: _load_cifar(CIFAR10, folder),
    )
)
CIFAR100 = _register(
    dataclasses.replace(
        CIFAR10,
        name="cifar100",
        label="CIFAR-100",
        num_classes=100,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
        locate=lambda root, download: _locate_cifar("cifar100", root, download),
        load=lambda folder: _load_cifar(CIFAR100, folder),
    )
)
IMAGENET = _register(
    DatasetInfo(
        name="imagenet",
        num_classes=1000,
        in_chans=3,
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        family="imagenet",
        n_train_total=1_281_167,
        n_val=50_000,
        n_test=50_000,
        crop_padding=0,  # RandomResizedCrop instead
        hflip=True,
        label="ImageNet",
        locate=_locate_imagenet,
        load=_load_imagenet,
    )
)
SYNTHETIC = _register(
    DatasetInfo(
        name="synthetic",
        num_classes=4,
        in_chans=1,
        image_size=8,
        mean=(0.5,),
        std=(0.2,),
        family="synthetic",
        n_train_total=640,
        n_val=128,
        n_test=256,
        crop_padding=0,  # the class patterns are not translation invariant
        hflip=False,
        label="synthetic",
        locate=lambda root, download: None,
        load=lambda folder, **kwargs: make_synthetic(**kwargs),
    )
)
