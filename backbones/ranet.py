"""RANet (Yang et al., CVPR 2020) as the project spec (shared/spec/backbones.md §3) says.

Flows run one after another, lowest resolution first. Flow f's first B_{f-1} blocks
fuse the exports of flow f-1's blocks; its remaining (plain) blocks each end in an
exit. Resolutions are tracked statically as scale levels, so every resize that would
be the identity is skipped at build time rather than tested at run time.

State between exits: [current map, exports of the current flow's blocks so far (only
if a later flow fuses them), stem maps of flows not started yet].
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import ClassVar

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
    cat_channels,
    floor_mul,
    he_init_,
    make_stem_layer,
    resize_to,
)
from eebench.backbones.factory import register_model

Export = tuple[int, int]  # (channels, scale level) of one exported map


@dataclasses.dataclass(frozen=True, kw_only=True)
class RANetConfig(BackboneConfig):
    """RANet hyper-parameters; gr_factor, bn_factor and scale_list run per flow, lowest
    resolution first."""

    family: ClassVar[str] = "ranet"
    family_label: ClassVar[str] = "RANet"

    n_blocks: int
    block_step: int
    step: int
    scale_list: tuple[int, ...]
    compress_factor: float = 0.25
    step_mode: str = "even"
    bn_after: bool = True

    positive_fields = (*BackboneConfig.positive_fields, "n_blocks", "block_step", "step")
    tuple_fields = (*BackboneConfig.tuple_fields, "scale_list")

    @property
    def num_flows(self) -> int:
        return len(self.scale_list)

    def blocks_per_flow(self) -> list[int]:
        return [self.n_blocks + f * self.block_step for f in range(self.num_flows)]

    def growth(self, flow: int) -> int:
        return self.growth_rate * self.gr_factor[flow]

    def down_blocks(self, flow: int) -> set[int]:
        """Blocks whose last layer halves the resolution: the last scale_list[f]-1 of
        [0, B_0, ..., B_{f-1}] (0 never matches a block)."""
        entries = [0, *self.blocks_per_flow()[:flow]]
        return set(entries[len(entries) - (self.scale_list[flow] - 1) :])

    def transition_blocks(self, flow: int) -> set[int]:
        """Blocks followed by a transition: ⌊i·B_f / scale_list[f]⌋ for i = 1..scale_list[f]-1."""
        n_blocks, levels = self.blocks_per_flow()[flow], self.scale_list[flow]
        return {i * n_blocks // levels for i in range(1, levels)}

    def _validate(self) -> None:
        super()._validate()
        if self.step_mode != "even":
            self.fail("step_mode", "only the 'even' step mode is specified", "use 'even'")
        if self.bn_after is not True:
            self.fail("bn_after", "the reference always builds post-activation blocks", "use True")
        if self.step < 2:
            self.fail("step", "a one-layer fusion block is not buildable", "use step >= 2")
        self._validate_scale_list()
        if not 0 < self.compress_factor < 1:
            self.fail("compress_factor", "must lie in (0, 1)", "use 0.25 as the reference does")
        for f in range(1, self.num_flows):
            if not 1 <= floor_mul(self.compress_factor, self.growth(f)) < self.growth(f):
                self.fail(
                    "compress_factor",
                    f"flow {f} splits its growth {self.growth(f)} into ⌊growth·compress⌋ "
                    "fused and the rest own channels, and both must be >= 1",
                    "raise growth_rate or gr_factor, or change compress_factor",
                )
        self.check_head_input_size(self.scale_list[-1] - 1)

    def _validate_scale_list(self) -> None:
        if len(self.scale_list) != len(self.gr_factor):
            self.fail("scale_list", "needs one level per flow", "give it len(gr_factor) entries")
        if self.scale_list[0] != 1:
            self.fail("scale_list", "flow 0 must be at the lowest level", "start it with 1")
        for f, (a, b) in enumerate(itertools.pairwise(self.scale_list), 1):
            if b - a not in (0, 1) or b > f + 1:
                self.fail(
                    "scale_list",
                    f"entry {f} must equal the previous one or exceed it by 1 (and be <= {f + 1})",
                    "use a non-decreasing list with steps of 0 or 1, e.g. (1, 2, 3, 3)",
                )

    def build(self, num_classes: int, activation: str = "relu") -> RANet:
        return RANet(self, num_classes, activation)


def _transition(width: int, on: bool, reduction: float, act: str) -> tuple[nn.Module, int]:
    """1×1 CBR to ⌊reduction·width⌋ channels if `on`, else the identity."""
    if not on:
        return nn.Identity(), width
    out = floor_mul(reduction, width)
    return ConvBNAct(width, out, 1, 1, act), out


class PlainBlock(nn.Module):
    """`step` dense layers at one resolution, then an optional transition."""

    def __init__(
        self, cfg: RANetConfig, flow: int, width: int, level: int, transition: bool, act: str
    ) -> None:
        super().__init__()
        g, step = cfg.growth(flow), cfg.step
        self.layers = nn.ModuleList(
            DenseLayer(width + i * g, g, cfg.bn_factor[flow], act) for i in range(step)
        )
        merged = width + step * g
        self.transition, self.out_channels = _transition(merged, transition, cfg.reduction, act)
        self.out_level = level
        self.exports: list[Export] = [(width + i * g, level) for i in range(step + 1)]

    def forward(self, x: Tensor, fused: State) -> tuple[Tensor, State]:
        """`fused` is empty: plain blocks read no other flow (uniform block signature)."""
        exports = [x]
        for layer in self.layers:
            x = layer(x)
            exports.append(x)
        return self.transition(x), exports


class FusionLayer(nn.Module):
    """cat[R(x), R(BOT(e)), BOT(x)]: own growth from x, compressed growth from flow f-1."""

    def __init__(
        self,
        own: Bottleneck,
        cross: Bottleneck,
        *,
        resize_x: bool,
        resize_cross: bool,
    ) -> None:
        super().__init__()
        self.own, self.cross = own, cross
        self.resize_x, self.resize_cross = resize_x, resize_cross

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        a = self.own(x)
        b = self.cross(e)  # at the lower flow's resolution, resized afterwards
        if self.resize_x:
            x = resize_to(x, a)
        if self.resize_cross:
            b = resize_to(b, a)
        return cat_channels([x, b, a])


class FusionBlock(nn.Module):
    """`step` fusion layers (the last strided in a down block), a 1×1 fusion of the lower
    flow's last export, then an optional transition."""

    def __init__(
        self,
        cfg: RANetConfig,
        flow: int,
        width: int,
        level: int,
        fused: list[Export],
        *,
        down: bool,
        transition: bool,
        act: str,
    ) -> None:
        super().__init__()
        g, step = cfg.growth(flow), cfg.step
        cross_growth = floor_mul(cfg.compress_factor, g)
        self.out_level = level - down
        layers = []
        for i, (e_width, e_level) in enumerate(fused[:step]):
            strided = down and i == step - 1
            a_level = self.out_level if strided else level
            own = Bottleneck(
                width + i * g, g - cross_growth, cfg.bn_factor[flow], 2 if strided else 1, act
            )
            cross = Bottleneck(e_width, cross_growth, cfg.bn_factor[flow - 1], 1, act)
            layers.append(
                FusionLayer(own, cross, resize_x=strided, resize_cross=e_level != a_level)
            )
        self.layers = nn.ModuleList(layers)
        merged = width + step * g
        last_width, last_level = fused[step]
        self.last = ConvBNAct(last_width, floor_mul(cfg.compress_factor, merged), 1, 1, act)
        self.resize_last = last_level != self.out_level
        merged += self.last.conv.out_channels
        self.transition, self.out_channels = _transition(merged, transition, cfg.reduction, act)
        self.exports: list[Export] = [(width + i * g, level) for i in range(step)]
        self.exports.append((width + step * g, self.out_level))

    def forward(self, x: Tensor, fused: State) -> tuple[Tensor, State]:
        exports = [x]
        for layer, e in zip(self.layers, fused, strict=False):
            x = layer(x, e)
            exports.append(x)
        extra = self.last(fused[-1])
        if self.resize_last:
            extra = resize_to(extra, x)
        return self.transition(cat_channels([x, extra])), exports


class RANetStage(nn.Module):
    """The blocks between two exits: the rest of a flow, or a new flow up to its first exit.

    `n_exports` is the number of export maps in the incoming state; a stage that starts
    a flow consumes them (its fusion blocks read them) and takes its input from the
    first pending stem map.
    """

    def __init__(
        self,
        blocks: list[nn.Module],
        *,
        starts_flow: bool,
        n_exports: int,
        keep_exports: bool,
        step: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.starts_flow = starts_flow
        self.n_exports = n_exports
        self.keep_exports = keep_exports
        self.per_block = step + 1

    def forward(self, state: State) -> tuple[State, Tensor]:
        n = self.n_exports
        x, exports, pending = state[0], state[1 : 1 + n], state[1 + n :]
        fused: State = []
        if self.starts_flow:
            fused, exports = exports, []
            x, pending = pending[0], pending[1:]
        size = self.per_block
        for j, block in enumerate(self.blocks):
            x, block_exports = block(x, fused[j * size : (j + 1) * size])
            if self.keep_exports:
                exports = [*exports, *block_exports]
        return [x, *exports, *pending], x


class RANet(MultiExitNet):
    """Resolution-adaptive network; exits are numbered flow-major (§3 "Init" applied)."""

    def __init__(self, config: RANetConfig, num_classes: int, activation: str = "relu") -> None:
        num_classes = self.check_build_args(num_classes, activation)
        stages, head_widths = self._build_stages(config, activation)
        super().__init__(
            config,
            num_classes,
            activation,
            stem=self._build_stem(config, activation),
            stages=stages,
            heads=[ExitHead(w, config.stem, num_classes, activation) for w in head_widths],
        )
        he_init_(self.stages)  # the reference's init loop skips the stem
        he_init_(self.heads)

    @staticmethod
    def _build_stem(cfg: RANetConfig, act: str) -> PyramidStem:
        """Stem layer t feeds flow S-1-t; it strides where the flows' levels differ."""
        last = cfg.num_flows - 1
        widths = [cfg.n_channels * f for f in cfg.gr_factor]
        layers = [make_stem_layer(cfg.stem, cfg.in_channels, widths[last], act)]
        for f in range(last - 1, -1, -1):
            stride = 2 if cfg.scale_list[f] != cfg.scale_list[f + 1] else 1
            layers.append(ConvBNAct(widths[f + 1], widths[f], 3, stride, act))
        return PyramidStem(layers, reverse=True)

    @staticmethod
    def _build_stages(cfg: RANetConfig, act: str) -> tuple[list[RANetStage], list[int]]:
        """Build the blocks flow by flow; close a stage (and add a head) at every plain block."""
        stages, head_widths = [], []
        prev_exports: list[list[Export]] = []  # per block of the previous flow
        n_state_exports, per_block = 0, cfg.step + 1
        for f, n_blocks in enumerate(cfg.blocks_per_flow()):
            width, level = cfg.n_channels * cfg.gr_factor[f], cfg.scale_list[f]
            downs, transitions = cfg.down_blocks(f), cfg.transition_blocks(f)
            keep = f < cfg.num_flows - 1  # the next flow fuses this flow's exports
            blocks: list[nn.Module] = []
            starts_flow = f > 0
            flow_exports: list[list[Export]] = []
            for j in range(1, n_blocks + 1):
                if j <= len(prev_exports):
                    block: PlainBlock | FusionBlock = FusionBlock(
                        cfg,
                        f,
                        width,
                        level,
                        prev_exports[j - 1],
                        down=j in downs,
                        transition=j in transitions,
                        act=act,
                    )
                else:
                    block = PlainBlock(cfg, f, width, level, j in transitions, act)
                blocks.append(block)
                flow_exports.append(block.exports)
                width, level = block.out_channels, block.out_level
                if isinstance(block, PlainBlock):
                    stages.append(
                        RANetStage(
                            blocks,
                            starts_flow=starts_flow,
                            n_exports=n_state_exports,
                            keep_exports=keep,
                            step=cfg.step,
                        )
                    )
                    head_widths.append(width)
                    blocks, starts_flow = [], False
                    n_state_exports = j * per_block if keep else 0
            prev_exports = flow_exports
        return stages, head_widths


@register_model
def ranet_cifar() -> RANetConfig:
    """Seed paper Model-C-3 (RANet repo's train_cifar.sh): 4 flows, 8 exits."""
    return RANetConfig(
        name="ranet_cifar",
        n_blocks=2,
        block_step=2,
        step=4,
        scale_list=(1, 2, 3, 3),
        gr_factor=(4, 2, 1, 1),
        bn_factor=(4, 2, 1, 1),
        n_channels=16,
        growth_rate=6,
    )


@register_model
def ranet_imagenet() -> RANetConfig:
    """Seed paper Model-I-2: 4 flows at 7/14/28/56, 8 exits."""
    return RANetConfig(
        name="ranet_imagenet",
        n_blocks=2,
        block_step=2,
        step=8,
        scale_list=(1, 2, 3, 4),
        gr_factor=(4, 2, 2, 1),
        bn_factor=(4, 2, 2, 1),
        n_channels=64,
        growth_rate=16,
        stem="imagenet",
        image_size=224,
    )


@register_model
def ranet_fmnist() -> RANetConfig:
    """Tiny Fashion-MNIST default: 3 flows at 7/14/28, 4 exits."""
    return RANetConfig(
        name="ranet_fmnist",
        n_blocks=2,
        block_step=1,
        step=2,
        scale_list=(1, 2, 3),
        gr_factor=(4, 2, 1),
        bn_factor=(4, 2, 1),
        n_channels=8,
        growth_rate=4,
        in_channels=1,
        image_size=28,
    )
