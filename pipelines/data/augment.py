"""Augmentation: whole-batch uint8 ops for in-memory data, PIL transforms for ImageNet.

All randomness is drawn from an explicit seed (derived from run seed, epoch and batch
index), never from the caller's RNG streams, so a batch is a pure function of
(seed, epoch, batch) and a resumed run sees exactly the batches of an uninterrupted one.

The standard recipe (MSDNet/RANet references and all baselines) is a zero-padded random
crop plus an optional horizontal flip. The "timm" recipe of the seed paper's code adds
RandAugment 'rand-m9-mstd0.5-inc1' after crop and flip and RandomErasing (p 0.25, pixel
mode, one box) after normalisation; Mixup/CutMix belong to the training engine.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

RAND_AUGMENT = "rand-m9-mstd0.5-inc1"
ERASE_PROB = 0.25
AUGMENTS = ("standard", "timm", "none")


def derive_seed(*keys: int) -> int:
    """A 64-bit seed that is a pure function of the non-negative integer keys."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0])


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed the global Python, NumPy and torch CPU RNGs (timm and torchvision ops draw from
    them) for the block, then restore them, so the caller's streams are left untouched."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def crop_flip_params(
    batch: int, padding: int, hflip: bool, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random crop offsets (B×2, row and column, in [0, 2·padding]) and flip flags (B)."""
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), generator=generator)
    flips = (
        torch.rand(batch, generator=generator) < 0.5
        if hflip
        else torch.zeros(batch, dtype=torch.bool)
    )
    return offsets, flips


def apply_crop_flip(images: Tensor, padding: int, offsets: Tensor, flips: Tensor) -> Tensor:
    """Crop every image of a batch at its own offset in the zero-padded batch, flipping the
    flagged ones, in a single gather (the flip is folded into the column indices)."""
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h)
    columns = torch.arange(w).expand(b, w)
    columns = torch.where(flips[:, None], w - 1 - columns, columns) + offsets[:, 1:]
    return padded[
        torch.arange(b, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows.to(device)[:, None, :, None],
        columns.to(device)[:, None, None, :],
    ]


class Normalize:
    """uint8 → float32 and per-channel normalisation, (x/255 − mean)/std, in one fused pass."""

    def __init__(
        self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
    ) -> None:
        std_t = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t

    def __call__(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:  # the in-place ops below would overwrite a float input
            raise TypeError(f"Normalize expects uint8 images, got {images.dtype}")
        return images.to(torch.float32).mul_(self.scale).sub_(self.shift)


class PerImageRandAugment:
    """timm's RandAugment, applied per image through PIL on CPU (it only exists for PIL);
    fill colour and translation as timm's create_transform sets them, bicubic resampling."""

    def __init__(
        self, image_size: int, mean: tuple[float, ...], config: str = RAND_AUGMENT
    ) -> None:
        from timm.data.auto_augment import rand_augment_transform

        fill = tuple(round(255 * m) for m in mean)
        hparams = {
            "translate_const": int(image_size * 0.45),
            "img_mean": fill if len(fill) > 1 else fill[0],
            "interpolation": Image.Resampling.BICUBIC,
        }
        self.op = rand_augment_transform(config, hparams)

    def __call__(self, images: Tensor, seed: int) -> Tensor:
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()
        with seeded_global_rngs(seed):
            out = [
                np.asarray(self.op(Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a)))
                for a in arrays
            ]
        stacked = torch.from_numpy(np.stack(out)).reshape(arrays.shape)
        return stacked.permute(0, 3, 1, 2).to(images.device)


def make_random_erasing() -> Callable[[Tensor], Tensor]:
    """timm's RandomErasing as the seed paper's recipe configures it. Its noise patches are
    drawn on the CPU (then copied in), so results do not depend on the device."""
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(probability=ERASE_PROB, mode="pixel", max_count=1, device="cpu")


@dataclass(frozen=True)
class BatchTransform:
    """uint8 batch → augmented, normalised float32 batch; all randomness comes from `seed`."""

    normalize: Normalize
    padding: int = 0
    hflip: bool = False
    randaugment: PerImageRandAugment | None = None
    erasing: Callable[[Tensor], Tensor] | None = None

    def __call__(self, images: Tensor, seed: int) -> Tensor:
        if self.padding or self.hflip:
            generator = torch.Generator().manual_seed(seed)
            offsets, flips = crop_flip_params(len(images), self.padding, self.hflip, generator)
            images = apply_crop_flip(images, self.padding, offsets, flips)
        if self.randaugment is not None:
            images = self.randaugment(images, derive_seed(seed, 1))
        out = self.normalize(images)
        if self.erasing is not None:
            with seeded_global_rngs(derive_seed(seed, 2)):
                out = self.erasing(out)
        return out


def make_batch_transform(
    *,
    augment: str,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    padding: int,
    hflip: bool,
    device: torch.device,
) -> BatchTransform:
    """The in-memory recipe: "none" (eval), "standard" (crop+flip) or "timm" (+RA, erasing)."""
    _check_augment(augment)
    normalize = Normalize(mean, std, device)
    if augment == "none":
        return BatchTransform(normalize)
    if augment == "standard":
        return BatchTransform(normalize, padding, hflip)
    return BatchTransform(
        normalize, padding, hflip, PerImageRandAugment(image_size, mean), make_random_erasing()
    )


def imagenet_transforms(
    augment: str, image_size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[Callable[[Image.Image], Tensor], Callable[[Image.Image], Tensor]]:
    """(train, test) PIL transforms: RandomResizedCrop+flip / Resize 256 + CenterCrop 224;
    the timm recipe uses timm's create_transform (bicubic, RandAugment, erasing)."""
    from torchvision import transforms as T  # ~2 s of imports that in-memory data never need

    _check_augment(augment)
    resize = round(image_size / 0.875)
    bicubic = augment == "timm"
    interpolation = T.InterpolationMode.BICUBIC if bicubic else T.InterpolationMode.BILINEAR
    to_tensor = [T.ToTensor(), T.Normalize(mean, std)]
    test = T.Compose([T.Resize(resize, interpolation), T.CenterCrop(image_size), *to_tensor])
    if augment == "none":
        return test, test
    if augment == "standard":
        train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *to_tensor])
        return train, test
    from timm.data import create_transform

    train = create_transform(
        image_size,
        is_training=True,
        auto_augment=RAND_AUGMENT,
        interpolation="bicubic",
        re_prob=ERASE_PROB,
        re_mode="pixel",
        re_count=1,
        mean=mean,
        std=std,
    )
    return train, test


def _check_augment(augment: str) -> None:
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENTS)}")
