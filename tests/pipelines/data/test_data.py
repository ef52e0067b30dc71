"""Data stage: registry, loading and its error messages, protocol splits, augmentation and
the resumable batch order. CIFAR and ImageNet run on tiny files generated here."""

from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eebench.pipelines.data import datasets
from eebench.pipelines.data.augment import (
    BatchTransform,
    Normalize,
    PerImageRandAugment,
    apply_crop_flip,
    crop_flip_params,
    make_batch_transform,
)
from eebench.pipelines.data.datasets import (
    DatasetNotFoundError,
    get_dataset_info,
    load_dataset,
    make_synthetic,
    prepare_dataset,
)
from eebench.pipelines.data.loaders import Loaders, build_loaders
from eebench.pipelines.services.registry import UnknownNameError
from eebench.pipelines.data.splits import SplitFileError, get_split, split_path

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_DEBIAN_FMNIST = all((DEBIAN_DIR / f"{s}.gz").is_file() for s in datasets.FMNIST_FILES)
needs_debian_fmnist = pytest.mark.skipif(
    not HAVE_DEBIAN_FMNIST,
    reason=f"Fashion-MNIST gz files absent from {DEBIAN_DIR} "
    "(Debian package dataset-fashion-mnist not installed)",
)


# ----------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.with_name(path.name + ".gz") if gz else path).write_bytes(
        gzip.compress(raw) if gz else raw
    )


def write_tiny_fmnist(folder: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28)),
        np.arange(n_train) % 10,
        rng.integers(0, 256, (n_test, 28, 28)),
        np.arange(n_test) % 10,
    )
    for stem, array in zip(datasets.FMNIST_FILES, arrays, strict=True):
        write_idx(folder / stem, array, gz)


def write_tiny_cifar(root: Path, name: str, n_per_file: int) -> tuple[np.ndarray, np.ndarray]:
    """Python pickles in torchvision's layout; returns the test images and labels written."""
    rng = np.random.default_rng(1)
    num_classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        folder, train, test, key = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            "labels",
        )
    else:
        folder, train, test, key = "cifar-100-python", ["train"], ["test"], "fine_labels"
    (root / folder).mkdir(parents=True)
    for file_name in [*train, *test]:
        entry = {
            "data": rng.integers(0, 256, (n_per_file, 3072), dtype=np.uint8),
            key: list(rng.integers(0, num_classes, n_per_file)),
        }
        with (root / folder / file_name).open("wb") as handle:
            pickle.dump(entry, handle)
    return entry["data"].reshape(-1, 3, 32, 32), np.asarray(entry[key])


def write_tiny_imagefolder(root: Path, n_train: int = 6, n_val: int = 2) -> None:
    rng = np.random.default_rng(2)
    for part, n in (("train", n_train), ("val", n_val)):
        for wnid in ("n01", "n02"):
            (root / "imagenet" / part / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "imagenet" / part / wnid / f"{i}.png")


def synthetic_loaders(tmp_path: Path, **kwargs: object) -> Loaders:
    settings: dict = dict(
        data_root=tmp_path / "data",
        split_dir=tmp_path / "splits",
        seed=3,
        batch_size=32,
        eval_batch_size=50,
        crop_padding=2,
        hflip=True,
    )
    return build_loaders("synthetic", **(settings | kwargs))


def batches_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


@pytest.fixture
def no_system_fmnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Pretend the Debian package is not installed."""
    nowhere = tmp_path / "usr-share-nowhere"
    monkeypatch.setattr(datasets, "FMNIST_SYSTEM_DIRS", (nowhere,))
    return nowhere


# ----------------------------------------------------------------------------- registry


def test_registry_holds_the_five_datasets() -> None:
    assert datasets.DATASETS.names() == [
        "cifar10",
        "cifar100",
        "fashion_mnist",
        "imagenet",
        "synthetic",
    ]
    cifar100 = get_dataset_info("cifar100")
    assert (cifar100.num_classes, cifar100.in_chans, cifar100.family, cifar100.n_val) == (
        100,
        3,
        "cifar",
        5000,
    )
    assert get_dataset_info("imagenet").n_val == 50_000
    assert get_dataset_info("fashion_mnist").family == "fmnist"
    assert len(get_dataset_info("cifar10").std) == 3


def test_unknown_dataset_lists_registered_names() -> None:
    with pytest.raises(UnknownNameError) as error:
        get_dataset_info("cifar11")
    for name in datasets.DATASETS:
        assert name in str(error.value)


# ----------------------------------------------------------------------------- loading


@needs_debian_fmnist
def test_fashion_mnist_loads_from_debian_location(tmp_path: Path) -> None:
    start = time.perf_counter()
    data = load_dataset("fashion_mnist", tmp_path)
    seconds = time.perf_counter() - start
    assert seconds < 3.0, f"loading took {seconds:.2f} s"  # ~0.5 s alone; CPUs are shared
    assert data.train_images.shape == (60_000, 1, 28, 28)
    assert data.test_images.shape == (10_000, 1, 28, 28)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10
    assert "fashion-mnist" in prepare_dataset("fashion_mnist", tmp_path, download=False)


@pytest.mark.parametrize("sub, gz", [("fashion_mnist", False), ("FashionMNIST/raw", True)])
def test_fashion_mnist_data_root_comes_before_system_dir(
    tmp_path: Path, sub: str, gz: bool
) -> None:
    write_tiny_fmnist(tmp_path / sub, gz=gz)
    data = load_dataset("fashion_mnist", tmp_path)
    assert data.train_images.shape == (30, 1, 28, 28) and data.test_labels.shape == (10,)
    assert data.info.n_train_total == 30


def test_gzipped_files_are_decompressed_once_and_again_when_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EEBENCH_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "data" / "fashion_mnist"
    write_tiny_fmnist(folder, gz=True)
    first = load_dataset("fashion_mnist", tmp_path / "data")
    copies = sorted((tmp_path / "cache" / "idx").iterdir())
    assert len(copies) == len(datasets.FMNIST_FILES)
    decompressed = []
    monkeypatch.setattr(datasets, "_decompress", lambda path: decompressed.append(path))
    again = load_dataset("fashion_mnist", tmp_path / "data")
    assert decompressed == [] and torch.equal(again.train_images, first.train_images)
    monkeypatch.undo()
    monkeypatch.setenv("EEBENCH_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_fmnist(folder, gz=True, n_train=20)  # replaced: size and mtime change
    assert load_dataset("fashion_mnist", tmp_path / "data").train_images.shape[0] == 20


def test_an_unwritable_cache_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("EEBENCH_CACHE_DIR", str(tmp_path / "cache"))
    write_tiny_fmnist(tmp_path / "fashion_mnist", gz=True)
    assert load_dataset("fashion_mnist", tmp_path).train_images.shape == (30, 1, 28, 28)
    assert not list(tmp_path.glob("**/*.partial"))


def test_truncated_idx_file_is_reported(tmp_path: Path) -> None:
    write_tiny_fmnist(tmp_path / "fashion_mnist", gz=False)
    path = tmp_path / "fashion_mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(datasets.DatasetFormatError, match="truncated"):
        load_dataset("fashion_mnist", tmp_path)


def test_truncated_gz_file_is_named(tmp_path: Path) -> None:
    write_tiny_fmnist(tmp_path / "fashion_mnist", gz=True)
    path = next((tmp_path / "fashion_mnist").glob("train-images*.gz"))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(datasets.DatasetFormatError, match="not a complete gzip file") as error:
        load_dataset("fashion_mnist", tmp_path)
    assert str(path) in str(error.value) and "delete it and get it again" in str(error.value)


def test_missing_fashion_mnist_says_where_and_how(tmp_path: Path, no_system_fmnist: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        build_loaders(
            "fashion_mnist",
            data_root=tmp_path,
            split_dir=tmp_path / "splits",
            seed=0,
            batch_size=8,
            eval_batch_size=8,
        )
    message = str(error.value)
    for place in (tmp_path / "fashion_mnist", tmp_path / "FashionMNIST" / "raw", no_system_fmnist):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "eebench data fashion_mnist --download" in message
    assert not (tmp_path / "splits").exists()  # raised before anything else happened


def test_failed_download_is_part_of_the_message(
    tmp_path: Path, no_system_fmnist: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DatasetNotFoundError, match=r"download attempt failed.*Name or service"):
        prepare_dataset("fashion_mnist", tmp_path, download=True)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cifar10", ["cifar-10-batches-py", "data_batch_5", "eebench data cifar10 --download"]),
        ("cifar100", ["cifar-100-python", "eebench data cifar100 --download"]),
        ("imagenet", ["imagenet/train", "imagenet/val", "<wnid>/*.JPEG"]),
    ],
)
def test_missing_dataset_message(tmp_path: Path, name: str, expected: list[str]) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        prepare_dataset(name, tmp_path, download=False)
    for text in [str(tmp_path), *expected]:
        assert text in str(error.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_from_python_pickles(tmp_path: Path, name: str) -> None:
    test_images, test_labels = write_tiny_cifar(tmp_path, name, n_per_file=12)
    n_train = 60 if name == "cifar10" else 12
    data = load_dataset(name, tmp_path)
    assert (
        data.train_images.shape == (n_train, 3, 32, 32) and data.train_images.dtype == torch.uint8
    )
    assert torch.equal(data.test_images, torch.from_numpy(test_images))
    assert "found in" in prepare_dataset(name, tmp_path)

    loaders = build_loaders(
        name,
        data_root=tmp_path,
        split_dir=tmp_path / "splits",
        seed=0,
        batch_size=4,
        eval_batch_size=5,
        n_val=4,
    )
    assert (loaders.train.num_samples, loaders.val.num_samples) == (n_train - 4, 4)
    x, y = next(iter(loaders.train.iterate(0)))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    info = loaders.info
    x_test = torch.cat([x for x, _ in loaders.test])
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]
    expected = (torch.from_numpy(test_images).float() / 255 - mean) / std
    torch.testing.assert_close(x_test, expected)
    assert torch.equal(torch.cat([y for _, y in loaders.test]), torch.from_numpy(test_labels))


@pytest.mark.parametrize("augment", ["standard", "timm"])
def test_imagenet_folder_loaders(tmp_path: Path, augment: str) -> None:
    write_tiny_imagefolder(tmp_path)
    settings = dict(data_root=tmp_path, split_dir=tmp_path / "splits", seed=0, n_val=4)
    loaders = build_loaders(
        "imagenet", batch_size=2, eval_batch_size=3, augment=augment, **settings
    )
    assert loaders.info.num_classes == 2 and loaders.info.n_train_total == 12
    assert (len(loaders.train), loaders.val.num_samples, loaders.test.num_samples) == (4, 4, 4)
    full = list(loaders.train.iterate(epoch=1))
    assert full[0][0].shape == (2, 3, 224, 224) and full[0][1].dtype == torch.int64
    assert batches_equal(list(loaders.train.iterate(epoch=1, start_batch=2)), full[2:])
    assert not batches_equal(list(loaders.train.iterate(epoch=2)), full)
    val = list(loaders.val)
    assert [x.shape[0] for x, _ in val] == [3, 1]
    assert batches_equal(val, list(loaders.val))  # test-time transforms: deterministic


def test_imagenet_batches_do_not_depend_on_num_workers(tmp_path: Path) -> None:
    write_tiny_imagefolder(tmp_path)
    settings = dict(data_root=tmp_path, split_dir=tmp_path / "splits", seed=0, n_val=4)
    serial = build_loaders("imagenet", batch_size=2, eval_batch_size=3, **settings)
    parallel = build_loaders("imagenet", batch_size=2, eval_batch_size=3, num_workers=2, **settings)
    assert batches_equal(list(parallel.train.iterate(0, 1)), list(serial.train.iterate(0, 1)))


# ----------------------------------------------------------------------------- splits


def test_split_sizes_and_file_reuse(tmp_path: Path) -> None:
    split = get_split("fashion_mnist", tmp_path, seed=0)
    assert (len(split.train_idx), len(split.val_idx)) == (55_000, 5_000)
    assert np.array_equal(
        np.sort(np.concatenate([split.train_idx, split.val_idx])), np.arange(60_000)
    )
    path = split_path("fashion_mnist", tmp_path, 0, 60_000, 5_000)
    assert path.name == "fashion_mnist_split_seed0.npz" and path.is_file()
    again = get_split("fashion_mnist", tmp_path, seed=0)
    assert np.array_equal(again.train_idx, split.train_idx) and np.array_equal(
        again.val_idx, split.val_idx
    )
    other = get_split("fashion_mnist", tmp_path / "other", seed=1)
    assert not np.array_equal(other.val_idx, split.val_idx)
    # The file, not the RNG, is the source of truth once written.
    np.savez(path, train=other.train_idx, val=other.val_idx, seed=0, dataset="fashion_mnist")
    assert np.array_equal(get_split("fashion_mnist", tmp_path, seed=0).val_idx, other.val_idx)


def test_protocol_split_sizes() -> None:
    for name, n_train in (("cifar10", 45_000), ("cifar100", 45_000), ("imagenet", 1_231_167)):
        info = get_dataset_info(name)
        assert info.n_train_total - info.n_val == n_train


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("garbage", "unreadable"),
        ("truncated", "unreadable"),
        ("overlap", "overlap"),
        ("sizes", "sizes 500/140"),
        ("range", "outside"),
        ("other seed", "drawn for synthetic with seed 1, not synthetic seed 0"),
        ("other dataset", "drawn for cifar10 with seed 0"),
    ],
)
def test_corrupted_split_file_is_named(tmp_path: Path, damage: str, problem: str) -> None:
    path = split_path("synthetic", tmp_path, 0, 640, 128)
    perm = np.arange(640)
    made_for = {"seed": 0, "dataset": "synthetic"}
    arrays = {
        "overlap": {"train": perm[:512], "val": perm[:128]},
        "sizes": {"train": perm[:500], "val": perm[500:]},
        "range": {"train": perm[:512], "val": perm[512:] + 1},
        "other seed": {"train": perm[:512], "val": perm[512:], "seed": 1},
        "other dataset": {"train": perm[:512], "val": perm[512:], "dataset": "cifar10"},
    }
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncated":
        get_split("synthetic", tmp_path, seed=0)
        path.write_bytes(path.read_bytes()[:200])
    else:
        np.savez(path, **{**made_for, **arrays[damage]})
    with pytest.raises(SplitFileError) as error:
        get_split("synthetic", tmp_path, seed=0)
    message = str(error.value)
    assert str(path) in message and problem in message and "Delete it" in message


def test_non_protocol_sizes_get_their_own_file(tmp_path: Path) -> None:
    get_split("synthetic", tmp_path, seed=0, n_train_total=100, n_val=10)
    assert (tmp_path / "synthetic_n100_val10_split_seed0.npz").is_file()


def test_train_subset_keeps_val_and_test(tmp_path: Path) -> None:
    full = synthetic_loaders(tmp_path)
    small = synthetic_loaders(tmp_path, train_subset=100, train_eval_subset=40)
    assert np.array_equal(small.split.train_idx, full.split.train_idx[:100])
    assert np.array_equal(small.split.val_idx, full.split.val_idx)
    assert (small.train.num_samples, len(small.train), small.train_eval.num_samples) == (100, 3, 40)
    assert small.test.num_samples == full.test.num_samples == 256
    with pytest.raises(ValueError, match="train_subset"):
        synthetic_loaders(tmp_path, train_subset=10_000)


# ----------------------------------------------------------------------------- augmentation


def test_crop_flip_matches_per_image_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 8, 9), dtype=torch.uint8, generator=generator)
    offsets, flips = crop_flip_params(16, 3, True, generator)
    assert flips.any() and not flips.all()
    out = apply_crop_flip(images, 3, offsets, flips)
    for i in range(16):
        padded = np.pad(images[i].numpy(), ((0, 0), (3, 3), (3, 3)))
        row, col = offsets[i].tolist()
        expected = padded[:, row : row + 8, col : col + 9]
        if flips[i]:
            expected = expected[:, :, ::-1]
        assert np.array_equal(out[i].numpy(), expected)


def test_standard_augmentation_shapes_and_ranges() -> None:
    info = get_dataset_info("fashion_mnist")
    images = torch.randint(1, 256, (64, 1, 28, 28), dtype=torch.uint8)
    transform = make_batch_transform(
        augment="standard",
        image_size=28,
        mean=info.mean,
        std=info.std,
        padding=2,
        hflip=False,
        device=torch.device("cpu"),
    )
    out = transform(images, seed=5)
    assert out.shape == images.shape and out.dtype == torch.float32
    low, high = -info.mean[0] / info.std[0], (1 - info.mean[0]) / info.std[0]
    assert out.min() >= low - 1e-6 and out.max() <= high + 1e-6
    assert torch.isclose(out.min(), torch.tensor(low))  # zero padding entered somewhere
    assert torch.equal(transform(images, seed=5), out) and not torch.equal(
        transform(images, seed=6), out
    )


def test_normalize_matches_torchvision() -> None:
    from torchvision.transforms import functional as TF

    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    expected = TF.normalize(images.float() / 255, mean, std)
    torch.testing.assert_close(Normalize(mean, std, torch.device("cpu"))(images), expected)
    plain = BatchTransform(Normalize(mean, std, torch.device("cpu")))
    torch.testing.assert_close(plain(images, seed=0), expected)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_rand_augment_changes_images_deterministically(in_chans: int) -> None:
    images = torch.randint(0, 256, (32, in_chans, 16, 16), dtype=torch.uint8)
    rand_augment = PerImageRandAugment(16, (0.5,) * in_chans)
    out = rand_augment(images, seed=9)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert (out != images).flatten(1).any(1).float().mean() > 0.3
    assert torch.equal(rand_augment(images, seed=9), out)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_timm_recipe_is_seeded_and_leaves_global_rngs_alone(tmp_path: Path, in_chans: int) -> None:
    loaders = synthetic_loaders(
        tmp_path,
        augment="timm",
        synthetic_kwargs={"in_chans": in_chans, "image_size": 12, "n_train": 96, "n_val": 32},
    )
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    full = list(loaders.train.iterate(epoch=0))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert full[0][0].shape == (32, in_chans, 12, 12) and full[0][0].dtype == torch.float32
    assert batches_equal(list(loaders.train.iterate(epoch=0, start_batch=1)), full[1:])
    plain = synthetic_loaders(
        tmp_path,
        augment="standard",
        synthetic_kwargs={"in_chans": in_chans, "image_size": 12, "n_train": 96, "n_val": 32},
    )
    assert not torch.equal(next(plain.train.iterate(0))[0], full[0][0])


# ----------------------------------------------------------------------------- batch order


def test_resumed_epoch_equals_the_tail_of_a_full_epoch(tmp_path: Path) -> None:
    loaders = synthetic_loaders(tmp_path)
    assert len(loaders.train) == 512 // 32  # drop_last
    full = list(loaders.train.iterate(epoch=4))
    assert batches_equal(list(loaders.train.iterate(epoch=4, start_batch=5)), full[5:])
    assert list(loaders.train.iterate(epoch=4, start_batch=len(loaders.train))) == []
    rebuilt = synthetic_loaders(tmp_path)  # e.g. after a restart
    assert batches_equal(list(rebuilt.train.iterate(epoch=4)), full)
    assert not batches_equal(list(loaders.train.iterate(epoch=5)), full)
    with pytest.raises(ValueError, match="start_batch"):
        next(loaders.train.iterate(epoch=4, start_batch=len(loaders.train) + 1))


def test_eval_loaders_are_plain_and_ordered(tmp_path: Path) -> None:
    loaders = synthetic_loaders(tmp_path)
    data = make_synthetic()
    assert [len(x) for x, _ in loaders.val] == [50, 50, 28]  # no drop_last
    x_val = torch.cat([x for x, _ in loaders.val])
    expected = (data.train_images[loaders.split.val_idx].float() / 255 - 0.5) / 0.2
    torch.testing.assert_close(x_val, expected)
    assert batches_equal(list(loaders.val.iterate(epoch=0)), list(loaders.val.iterate(epoch=7)))


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_fast_and_learnable() -> None:
    start = time.perf_counter()
    data = make_synthetic(seed=1)
    assert time.perf_counter() - start < 0.1
    x, y = data.train_images.float().flatten(1), data.train_labels
    centroids = torch.stack([x[y == k].mean(0) for k in range(4)])
    predicted = torch.cdist(data.test_images.float().flatten(1), centroids).argmin(1)
    correct = (predicted == data.test_labels).numpy()
    easy = data.test_easy
    assert correct.mean() > 0.7  # chance: 0.25
    assert correct[easy].mean() > 0.95 and correct[~easy].mean() < correct[easy].mean() - 0.2


def test_synthetic_options_reach_info_and_easy_masks(tmp_path: Path) -> None:
    loaders = synthetic_loaders(
        tmp_path, synthetic_kwargs={"num_classes": 3, "image_size": 12, "in_chans": 2, "n_val": 40}
    )
    info = loaders.info
    assert (info.num_classes, info.image_size, info.in_chans, info.n_val) == (3, 12, 2, 40)
    assert loaders.val.num_samples == 40 and len(info.mean) == 2
    assert loaders.easy is not None
    assert [len(loaders.easy[k]) for k in ("val", "test", "train_eval")] == [40, 256, 512]
    assert "nothing to prepare" in prepare_dataset("synthetic", tmp_path)
