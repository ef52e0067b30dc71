"""Building blocks shared by MSDNet and RANet, and their common multi-exit base class.

Both references use the same post-activation conv-BN-act unit, the same bottleneck,
the same dense "concatenate the input with a new branch" layer, the same stems and
the same exit heads (the project spec, shared/spec/backbones.md §2, §3); they live here
once. `MultiExitNet` fixes the staged interface (stem, then one stage and one head per
exit) that real early exit, feature extraction and the FLOPs counter all rely on.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

ACTIVATIONS = ("relu", "gelu")
STEM_STYLES = ("cifar", "imagenet")
CIFAR_HEAD_WIDTH = 128
HEAD_INPUT_SIZES = (7, 8)  # two stride-2 convs and a 2×2 pool bring these to 1×1

State = list[Tensor]


# --------------------------------------------------------------------------- config


def check_activation(activation: str) -> str:
    """Return `activation` if supported; a typo must fail before any layer is built."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not supported; use one of {ACTIVATIONS}")
    return activation


def is_positive_int(value: object) -> bool:
    """Integers >= 1, NumPy integers included, bools excluded."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def floor_mul(factor: float, width: int) -> int:
    """⌊factor·width⌋, the width rule of transitions and compressions."""
    return math.floor(factor * width)


def halve(size: int) -> int:
    """Spatial size after a 3×3, stride-2, padding-1 conv."""
    return (size - 1) // 2 + 1


def stem_output_size(style: str, image_size: int) -> int:
    """Spatial size of the finest map: cifar keeps it, imagenet is 7×7/2 conv + 3×3/2 pool."""
    if style == "cifar":
        return image_size
    return halve(halve(image_size))  # 7x7/2 pad 3 and 3x3/2 pad 1 both halve (rounding up)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneConfig:
    """Fields both architectures share; subclasses add theirs and validate in `_validate`."""

    name: str
    n_channels: int
    growth_rate: int
    gr_factor: tuple[int, ...]
    bn_factor: tuple[int, ...]
    reduction: float = 0.5
    stem: str = "cifar"
    in_channels: int = 3
    image_size: int = 32

    # Display: the architecture family (the paper names backbones by family) and its label.
    family: ClassVar[str] = ""
    family_label: ClassVar[str] = ""
    # Name tokens that say which data a config is for; the label leaves them out.
    data_tokens: ClassVar[frozenset[str]] = frozenset({"cifar", "imagenet", "fmnist"})

    positive_fields: ClassVar[tuple[str, ...]] = (
        "n_channels",
        "growth_rate",
        "in_channels",
        "image_size",
    )
    tuple_fields: ClassVar[tuple[str, ...]] = ("gr_factor", "bn_factor")

    def __post_init__(self) -> None:
        for field in self.tuple_fields:  # accept lists, store hashable tuples
            object.__setattr__(self, field, tuple(getattr(self, field)))
        self._validate()

    @property
    def label(self) -> str:
        """'msdnet_imagenet_step7' -> 'MSDNet step7', 'ranet_cifar' -> 'RANet'."""
        extra = [t for t in self.name.split("_")[1:] if t not in self.data_tokens]
        return " ".join([self.family_label or self.family, *extra])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)

    def fail(self, field: str, problem: str, fix: str) -> NoReturn:
        """Raise the uniform validation error: which field, what is wrong, how to fix it."""
        value = getattr(self, field, None)
        raise ValueError(f"{type(self).__name__}.{field}={value!r}: {problem}; {fix}")

    def _validate(self) -> None:
        for field in self.positive_fields:
            value = getattr(self, field)
            if not is_positive_int(value):
                self.fail(field, "must be a positive integer", "set it to an integer >= 1")
        if self.stem not in STEM_STYLES:
            self.fail("stem", "unknown stem/head style", f"use one of {STEM_STYLES}")
        if not self.gr_factor or any(f < 1 for f in self.gr_factor):
            self.fail("gr_factor", "needs one positive factor per scale", "e.g. (1, 2, 4)")
        if len(self.bn_factor) != len(self.gr_factor) or any(f < 1 for f in self.bn_factor):
            self.fail(
                "bn_factor",
                f"needs {len(self.gr_factor)} positive factors, one per gr_factor entry",
                "give bn_factor the same length as gr_factor",
            )
        if not 0 < self.reduction <= 1:
            self.fail("reduction", "must lie in (0, 1]", "use 0.5 as the references do")

    def check_head_input_size(self, halvings: int) -> None:
        """The coarsest map must be 7×7 or 8×8 so that every head ends at 1×1."""
        size = stem_output_size(self.stem, self.image_size)
        for _ in range(halvings):
            size = halve(size)
        if size not in HEAD_INPUT_SIZES:
            self.fail(
                "image_size",
                f"the coarsest map is {size}×{size}, heads need 7×7 or 8×8",
                "use 32 or 28 with a cifar stem and 224 with an imagenet stem, "
                "or change the number of scales",
            )

    def build(self, num_classes: int, activation: str = "relu") -> MultiExitNet:
        """Build the model of this config (implemented by each architecture)."""
        raise NotImplementedError


# --------------------------------------------------------------------------- layers


def make_activation(activation: str) -> nn.Module:
    """ReLU (in place, saves memory) or exact-erf GELU (the seed authors' variant, §7)."""
    return nn.ReLU(inplace=True) if activation == "relu" else nn.GELU()


class ConvBNAct(nn.Module):
    """Conv (bias-free unless asked) → BatchNorm → activation, the post-activation unit."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        activation: str,
        *,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=bias
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Sequential):
    """1×1 to m = min(a, β·b) channels, then 3×3 (maybe strided) to b channels."""

    def __init__(
        self, in_channels: int, out_channels: int, bn_factor: int, stride: int, activation: str
    ) -> None:
        mid = min(in_channels, bn_factor * out_channels)
        super().__init__(
            ConvBNAct(in_channels, mid, 1, 1, activation),
            ConvBNAct(mid, out_channels, 3, stride, activation),
        )


class DenseLayer(nn.Module):
    """cat[x, BOT(x)]: the input is kept and `growth` new channels are appended."""

    def __init__(self, in_channels: int, growth: int, bn_factor: int, activation: str) -> None:
        super().__init__()
        self.branch = Bottleneck(in_channels, growth, bn_factor, 1, activation)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.branch(x)], dim=1)


def cat_channels(tensors: Sequence[Tensor]) -> Tensor:
    """Channel concatenation (dim 1) that keeps a channels_last layout.

    torch.cat returns NCHW unless all inputs suggest the same layout, and a 1-channel map
    is ambiguous (its channel stride is free): RANet's fusion branch has ⌊6·0.25⌋ = 1
    channel in ranet_cifar's flows 2-3, came back NCHW-strided, and every conv after such
    a cat then copied its input back to channels_last. When the first input is
    channels_last, any input that is not gets re-strided first (for the 1-channel maps, a
    copy of one channel). Values are those of torch.cat; NCHW inputs take torch.cat as is.
    """
    first = tensors[0]
    if first.shape[1] > 1 and first.stride(1) == 1:  # channels_last; NCHW has stride H·W
        tensors = [t if t.stride(1) == 1 else _restride_channels_last(t) for t in tensors]
    return torch.cat(list(tensors), dim=1)


def _restride_channels_last(x: Tensor) -> Tensor:
    """A channels_last copy, also of a 1-channel map (`contiguous` would return x itself)."""
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def resize_to(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resize (align_corners=True, as the reference) to the spatial size of `ref`.

    Callers skip it where sizes are statically equal: it is then exactly the identity.
    """
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by `scale`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def split_gradient(x: Tensor, readers: int) -> tuple[Tensor, Tensor]:
    """x for the head and x for the later blocks, both equal to x, whose backward into x is
    [∂head + (n−1)·∂later]/n, n = `readers` (the exits whose losses reach x: this one and
    every later one). When each later exit's gradient reaching x is split the same way, x
    gets the mean of the n exits' gradients (BoostNet's and IMTA's gradient rescaling)."""
    head = _ScaleGradient.apply(x, 1.0 / readers)
    return head, _ScaleGradient.apply(head, float(readers - 1))


def make_stem_layer(style: str, in_channels: int, out_channels: int, activation: str) -> nn.Module:
    """First stem layer: 3×3 conv (cifar) or 7×7/2 conv with bias + 3×3/2 max-pool (imagenet)."""
    if style == "cifar":
        return ConvBNAct(in_channels, out_channels, 3, 1, activation)
    return nn.Sequential(
        ConvBNAct(in_channels, out_channels, 7, 2, activation, bias=True),
        nn.MaxPool2d(3, 2, 1),
    )


class PyramidStem(nn.Module):
    """A chain of stem layers; returns every layer's output (one map per scale or flow)."""

    def __init__(self, layers: Sequence[nn.Module], reverse: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.reverse = reverse  # RANet lists flows coarsest first, its stem runs fine to coarse

    def forward(self, x: Tensor) -> State:
        maps = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return maps[::-1] if self.reverse else maps


class ExitHead(nn.Module):
    """Two stride-2 CBRs, 2×2 average pool, flatten, Linear; returns (features, logits)."""

    def __init__(self, in_channels: int, style: str, num_classes: int, activation: str) -> None:
        super().__init__()
        width = CIFAR_HEAD_WIDTH if style == "cifar" else in_channels
        self.in_channels = in_channels
        self.body = nn.Sequential(
            ConvBNAct(in_channels, width, 3, 2, activation),
            ConvBNAct(width, width, 3, 2, activation),
            nn.AvgPool2d(2),
            nn.Flatten(1),
        )
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.classifier(features)


def he_init_(modules: nn.Module) -> None:
    """RANet's init: He-normal fan-out convs, BN 1/0, zero Linear bias (weights keep defaults)."""
    for module in modules.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- base model


class MultiExitNet(nn.Module):
    """A stem, then K (stage, head) pairs; forward is the staged path run to the end.

    Stage k maps the state left by exit k-1 to the state after exit k plus the map its
    head reads. The state is a list of batch-first tensors, so early exit just drops rows
    (`select_state`). Every op lives inside `stem`, `stages.k` or `heads.k`, which is what
    lets the FLOPs counter attribute costs per exit (`exit_units`).
    """

    #: Whether `set_gradient_rescaling` can turn on: the later exits reach the map head k
    #: reads only through one tensor of the state (MSDNet's coarsest scale).
    supports_gradient_rescaling: ClassVar[bool] = False

    def __init__(
        self,
        config: BackboneConfig,
        num_classes: int,
        activation: str,
        *,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        heads: Sequence[ExitHead],
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.config = config
        self.config_name = config.name
        self.num_classes = num_classes
        self.activation = activation
        self.num_exits = len(heads)
        self.input_shape = config.input_shape
        self.head_in_channels = [head.in_channels for head in heads]
        self.feature_dims = [head.classifier.in_features for head in heads]

    @staticmethod
    def check_build_args(num_classes: int, activation: str) -> int:
        """Validate the non-config arguments before any layer is built; returns a plain int."""
        if not is_positive_int(num_classes):
            raise ValueError(f"num_classes={num_classes!r} must be a positive integer")
        check_activation(activation)
        return int(num_classes)

    def init_state(self, x: Tensor) -> State:
        """Run the stem; its output is the state that stage 0 consumes."""
        return list(self.stem(x))

    def forward_stage(self, k: int, state: State) -> tuple[State, Tensor, Tensor]:
        """Run everything between exit k-1 and exit k, then head k: (state, features, logits)."""
        state, head_input = self.stages[k](state)
        features, logits = self.heads[k](head_input)
        return state, features, logits

    @staticmethod
    def select_state(state: State, index: Tensor) -> State:
        """Keep only the samples in `index` (a LongTensor of rows or a bool mask).

        A tensor listed twice in the state (RANet: a block's output is also its last
        export) is indexed once and stays shared.
        """
        selected: dict[int, Tensor] = {}
        for t in state:
            if id(t) not in selected:
                selected[id(t)] = t[index]
        return [selected[id(t)] for t in state]

    def forward(
        self, x: Tensor, return_features: bool = False
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        state = self.init_state(x)
        logits, features = [], []
        for k in range(self.num_exits):
            state, feats, out = self.forward_stage(k, state)
            logits.append(out)
            features.append(feats)
        return (logits, features) if return_features else logits

    def set_gradient_rescaling(self, on: bool) -> None:
        """Rescale the gradient of each head's input between its head and the later exits
        (`split_gradient`; forward unchanged). Off by default; backbones without
        `supports_gradient_rescaling` cannot turn it on."""
        if on:
            raise ValueError(f"{self.config_name} cannot rescale gradients between its exits")

    def exit_classifiers(self) -> list[nn.Linear]:
        """The Linear layer of every exit head (post-hoc methods read their weights)."""
        return [head.classifier for head in self.heads]

    def exit_units(self) -> list[list[str]]:
        """Module names whose costs are first incurred by each exit, in forward order."""
        return [
            (["stem"] if k == 0 else []) + [f"stages.{k}", f"heads.{k}"]
            for k in range(self.num_exits)
        ]


def fold_batchnorm(model: MultiExitNet) -> MultiExitNet:
    """Eval-only copy with every BN folded into the conv before it (fewer kernels to run).

    The copy has no BN left, so train() would not update anything: it is frozen.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return folded.requires_grad_(False)
