"""MSDNet (Huang et al., ICLR 2018) as the project spec (shared/spec/backbones.md §2) says.

The state between exits is the list of scale maps still in use, finest first. A layer
keeps the coarsest `S - ⌊(n-1)/I⌋` scales; a layer that drops the finest scale is
followed by a 1×1 transition that halves the base width.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from eebench.backbones.common import (
    BackboneConfig,
    Bottleneck,
    ConvBNAct,
    DenseLayer,
    ExitHead,
    MultiExitNet,
    PyramidStem,
    State,
    floor_mul,
    make_stem_layer,
    split_gradient,
)
from eebench.backbones.factory import register_model

STEP_MODES = ("even", "lin_grow")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MSDNetConfig(BackboneConfig):
    """MSDNet hyper-parameters; gr_factor/bn_factor run from the finest to the coarsest scale."""

    family: ClassVar[str] = "msdnet"
    family_label: ClassVar[str] = "MSDNet"

    n_blocks: int
    step_mode: str
    step: int
    base: int
    prune: str = "max"
    bottleneck: bool = True

    positive_fields = (*BackboneConfig.positive_fields, "n_blocks", "step", "base")

    @property
    def num_scales(self) -> int:
        return len(self.gr_factor)

    def layers_per_block(self) -> list[int]:
        """Block 1 has `base` layers, later ones `step` (even) or step·(b-1)+1 (lin_grow)."""
        if self.step_mode == "lin_grow":
            later = [self.step * b + 1 for b in range(1, self.n_blocks)]
        else:
            later = [self.step] * (self.n_blocks - 1)
        return [self.base, *later]

    def _validate(self) -> None:
        super()._validate()
        if self.step_mode not in STEP_MODES:
            self.fail("step_mode", "unknown step mode", f"use one of {STEP_MODES}")
        if self.prune != "max":
            self.fail("prune", "only the 'max' pruning of the reference is specified", "use 'max'")
        if self.bottleneck is not True:
            self.fail("bottleneck", "only bottleneck layers are specified", "use True")
        for s in range(1, self.num_scales):
            if self.growth_rate * self.gr_factor[s] % 2:
                self.fail(
                    "growth_rate",
                    f"growth_rate·gr_factor[{s}] = {self.growth_rate * self.gr_factor[s]} is odd, "
                    "but scale s >= 1 splits its growth into two equal paths",
                    "use an even growth_rate or even gr_factor entries",
                )
        self.check_head_input_size(self.num_scales - 1)

    def build(self, num_classes: int, activation: str = "relu") -> MSDNet:
        return MSDNet(self, num_classes, activation)


class TwoPathUnit(nn.Module):
    """cat[x, BOT↓(finer), BOT(x)]: half the growth from the finer scale, half from x."""

    def __init__(
        self,
        finer_channels: int,
        channels: int,
        half_growth: int,
        finer_bn: int,
        bn: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.down = Bottleneck(finer_channels, half_growth, finer_bn, 2, activation)
        self.same = Bottleneck(channels, half_growth, bn, 1, activation)

    def forward(self, finer: Tensor, x: Tensor) -> Tensor:
        return torch.cat([x, self.down(finer), self.same(x)], dim=1)


class MSDLayer(nn.Module):
    """One MSD layer: outputs scales o..S-1, reading scales o..S-1 (or o-1..S-1 if dropping)."""

    def __init__(self, cfg: MSDNetConfig, width: int, first: int, drops: bool, act: str) -> None:
        super().__init__()
        gr, bn, g = cfg.gr_factor, cfg.bn_factor, cfg.growth_rate
        self.shift = int(drops)  # index of scale `first` in the input list
        self.two_path = [s > first or drops for s in range(first, cfg.num_scales)]
        self.units = nn.ModuleList(
            TwoPathUnit(width * gr[s - 1], width * gr[s], g * gr[s] // 2, bn[s - 1], bn[s], act)
            if two
            else DenseLayer(width * gr[s], g * gr[s], bn[s], act)
            for s, two in zip(range(first, cfg.num_scales), self.two_path, strict=True)
        )

    def forward(self, xs: State) -> State:
        out = []
        for p, (unit, two) in enumerate(zip(self.units, self.two_path, strict=True)):
            i = p + self.shift
            out.append(unit(xs[i - 1], xs[i]) if two else unit(xs[i]))
        return out


class Transition(nn.Module):
    """Per-scale 1×1 CBR from w·gr[s] to ⌊reduction·w⌋·gr[s] channels."""

    def __init__(self, width: int, new_width: int, factors: tuple[int, ...], act: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ConvBNAct(width * f, new_width * f, 1, 1, act) for f in factors)

    def forward(self, xs: State) -> State:
        return [conv(x) for conv, x in zip(self.convs, xs, strict=True)]


class MSDStage(nn.Module):
    """The layers (and transitions) of one block; the head reads the coarsest map.

    With `readers` > 0 (`MSDNet.set_gradient_rescaling`), the coarsest map's gradient is
    split between the head and the later blocks (`split_gradient`); the values are unchanged.
    Only in training mode: it changes nothing else, and eval mode (inference, the FLOPs
    trace) keeps the plain graph.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.readers = 0  # exits whose losses reach the coarsest map; 0: no rescaling

    def forward(self, xs: State) -> tuple[State, Tensor]:
        xs = self.layers(xs)
        if not (self.readers and self.training):
            return xs, xs[-1]
        head, later = split_gradient(xs[-1], self.readers)
        return [*xs[:-1], later], head


class MSDNet(MultiExitNet):
    """Multi-scale dense network with one exit per block (PyTorch default init, §2 "Init")."""

    # Later blocks read a block's coarsest map only through the state's last tensor.
    supports_gradient_rescaling: ClassVar[bool] = True

    def __init__(self, config: MSDNetConfig, num_classes: int, activation: str = "relu") -> None:
        num_classes = self.check_build_args(num_classes, activation)
        stages, widths = self._build_stages(config, activation)
        coarsest = config.gr_factor[-1]
        super().__init__(
            config,
            num_classes,
            activation,
            stem=self._build_stem(config, activation),
            stages=stages,
            heads=[ExitHead(w * coarsest, config.stem, num_classes, activation) for w in widths],
        )
        self.base_widths = widths  # w after each block (after its transition, if any)

    def set_gradient_rescaling(self, on: bool) -> None:
        """BoostNet's msdnet_ge (methods.md §6): after block k (0-based) of K, the coarsest
        map's gradient from head k is scaled by 1/(K−k), the later blocks' by (K−k−1)/(K−k)."""
        for k, stage in enumerate(self.stages):
            stage.readers = self.num_exits - k if on else 0

    @staticmethod
    def _build_stem(cfg: MSDNetConfig, act: str) -> PyramidStem:
        widths = [cfg.n_channels * f for f in cfg.gr_factor]
        layers = [make_stem_layer(cfg.stem, cfg.in_channels, widths[0], act)]
        layers += [ConvBNAct(a, b, 3, 2, act) for a, b in itertools.pairwise(widths)]
        return PyramidStem(layers, reverse=False)

    @staticmethod
    def _build_stages(cfg: MSDNetConfig, act: str) -> tuple[list[MSDStage], list[int]]:
        """Walk the layers once, tracking the base width w and the number of scales."""
        n_scales = cfg.num_scales
        interval = math.ceil(sum(cfg.layers_per_block()) / n_scales)
        width, n_in, layer_no = cfg.n_channels, n_scales, 0
        stages, widths = [], []
        for n_layers in cfg.layers_per_block():
            modules: list[nn.Module] = []
            for _ in range(n_layers):
                n_out = n_scales - layer_no // interval  # layer_no is n-1
                first, drops = n_scales - n_out, n_out < n_in
                modules.append(MSDLayer(cfg, width, first, drops, act))
                width += cfg.growth_rate
                if drops:
                    new_width = floor_mul(cfg.reduction, width)
                    modules.append(Transition(width, new_width, cfg.gr_factor[first:], act))
                    width = new_width
                n_in, layer_no = n_out, layer_no + 1
            stages.append(MSDStage(modules))
            widths.append(width)
        return stages, widths


@register_model
def msdnet_cifar() -> MSDNetConfig:
    """Seed paper CIFAR model: 7 exits after layers 1, 3, 6, 10, 15, 21, 28."""
    return MSDNetConfig(
        name="msdnet_cifar",
        n_blocks=7,
        step_mode="lin_grow",
        step=1,
        base=1,
        n_channels=16,
        growth_rate=6,
        gr_factor=(1, 2, 4),
        bn_factor=(1, 2, 4),
    )


@register_model
def msdnet_cifar_anytime() -> MSDNetConfig:
    """MSDNet paper's CIFAR anytime recipe: 7 exits every 2 layers after layer 4."""
    return MSDNetConfig(
        name="msdnet_cifar_anytime",
        n_blocks=7,
        step_mode="even",
        step=2,
        base=4,
        n_channels=16,
        growth_rate=6,
        gr_factor=(1, 2, 4),
        bn_factor=(1, 2, 4),
    )


def _imagenet_config(name: str, step: int) -> MSDNetConfig:
    """The two ImageNet configs differ only in layers per block (and so in depth)."""
    return MSDNetConfig(
        name=name,
        n_blocks=5,
        step_mode="even",
        step=step,
        base=step,
        n_channels=32,
        growth_rate=16,
        gr_factor=(1, 2, 4, 4),
        bn_factor=(1, 2, 4, 4),
        stem="imagenet",
        image_size=224,
    )


@register_model
def msdnet_imagenet_step4() -> MSDNetConfig:
    """MSDNet / L2W ImageNet model: 5 exits every 4 layers."""
    return _imagenet_config("msdnet_imagenet_step4", 4)


@register_model
def msdnet_imagenet_step7() -> MSDNetConfig:
    """Seed paper ImageNet model: 5 exits every 7 layers."""
    return _imagenet_config("msdnet_imagenet_step7", 7)


@register_model
def msdnet_fmnist() -> MSDNetConfig:
    """Tiny Fashion-MNIST default: 4 exits after layers 1, 3, 5, 7 on 1×28×28."""
    return MSDNetConfig(
        name="msdnet_fmnist",
        n_blocks=4,
        step_mode="even",
        step=2,
        base=1,
        n_channels=8,
        growth_rate=4,
        gr_factor=(1, 2, 4),
        bn_factor=(1, 2, 4),
        in_channels=1,
        image_size=28,
    )
