"""Registry, config validation, architecture widths and the multi-exit interface."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from eebench.backbones import (
    MSDNet,
    MSDNetConfig,
    MultiExitNet,
    RANet,
    RANetConfig,
    create_model,
    fold_batchnorm,
    get_model_config,
    list_models,
    ranet,
)
from eebench.methods.inference import concat_states
from eebench.pipelines.services.registry import UnknownNameError

# The project spec (shared/spec/backbones.md §1): head input width c_k per exit
HEAD_IN_CHANNELS = {
    "msdnet_cifar": [88, 136, 208, 304, 260, 200, 368],
    "msdnet_cifar_anytime": [160, 208, 140, 188, 236, 152, 200],
    "msdnet_imagenet_step4": [384, 384, 352, 304, 560],
    "msdnet_imagenet_step7": [576, 640, 608, 528, 976],
    "msdnet_fmnist": [48, 80, 64, 48],
    "ranet_cifar": [160, 256, 140, 188, 93, 117, 180, 204],
    "ranet_imagenet": [768, 1280, 716, 972, 975, 1231, 588, 716],
    "ranet_fmnist": [64, 96, 61, 31],
}
SMALL = ["msdnet_cifar", "msdnet_cifar_anytime", "msdnet_fmnist", "ranet_cifar", "ranet_fmnist"]
TINY = ["msdnet_fmnist", "ranet_fmnist"]


def images(model: MultiExitNet, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *model.input_shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- registry


def test_registered_names() -> None:
    assert list_models() == sorted(HEAD_IN_CHANNELS)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_config_builds(name: str, models) -> None:
    model = models(name)
    config = get_model_config(name)
    assert model.config_name == config.name == name
    assert model.num_exits == len(HEAD_IN_CHANNELS[name])
    assert model.head_in_channels == HEAD_IN_CHANNELS[name]
    cifar_heads = config.stem == "cifar"
    expected_dims = [128] * model.num_exits if cifar_heads else model.head_in_channels
    assert model.feature_dims == expected_dims
    assert model.input_shape == (1 if "fmnist" in name else 3, *(2 * (config.image_size,)))
    assert (model.num_classes, model.activation) == (10, "relu")


@pytest.mark.parametrize("name", SMALL)
def test_forward_shapes(name: str, models) -> None:
    model = models(name)
    with torch.no_grad():
        logits, features = model(images(model, 2), return_features=True)
    assert [tuple(t.shape) for t in logits] == [(2, 10)] * model.num_exits
    assert [t.shape[1] for t in features] == model.feature_dims


def test_imagenet_forward_shapes(models) -> None:
    """One 224×224 image through the largest config (the FLOPs tests trace the others)."""
    model = models("msdnet_imagenet_step4")
    with torch.no_grad():
        logits = model(images(model, 1))
    assert [tuple(t.shape) for t in logits] == [(1, 10)] * 5


def test_unknown_name_lists_registered_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        create_model("msdnet_cifar10", 10)
    assert all(name in str(err.value) for name in list_models())


def test_num_classes_positional_keyword_or_numpy() -> None:
    assert create_model("msdnet_fmnist", 7).num_classes == 7
    assert type(create_model("ranet_fmnist", np.int64(5)).num_classes) is int
    assert create_model("msdnet_fmnist", num_classes=3).heads[0].classifier.out_features == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_num_classes(bad) -> None:
    with pytest.raises(ValueError, match="num_classes"):
        create_model("ranet_fmnist", bad)


def test_bad_activation() -> None:
    with pytest.raises(ValueError, match=r"activation='swish'.*relu.*gelu"):
        create_model("msdnet_fmnist", 10, activation="swish")


@pytest.mark.parametrize("name", TINY)
def test_gelu_replaces_every_relu(name: str) -> None:
    model = create_model(name, 10, activation="gelu")
    acts = [m for m in model.modules() if isinstance(m, nn.ReLU | nn.GELU)]
    assert acts and all(isinstance(m, nn.GELU) and m.approximate == "none" for m in acts)
    assert model.activation == "gelu"


# --------------------------------------------------------------------------- validation

# (field, bad value, a fragment of the explanation or fix the message must contain)
MSD_BAD = [
    ("step_mode", "lg", "use one of"),
    ("prune", "min", "use 'max'"),
    ("bottleneck", False, "use True"),
    ("image_size", 64, "coarsest map is 16×16"),
    ("stem", "resnet", "use one of"),
    ("bn_factor", (1, 2), "same length as gr_factor"),
    ("n_blocks", 0, "positive integer"),
    ("reduction", 0.0, "must lie in"),
]
RANET_BAD = [
    ("step", 1, "one-layer fusion block"),
    ("compress_factor", 0.1, "both must be >= 1"),  # ⌊6·0.1⌋ = 0 fused channels in flow 2
    ("compress_factor", 1.0, "must lie in"),
    ("scale_list", (2, 2, 3, 3), "start it with 1"),
    ("scale_list", (1, 3, 3, 3), "steps of 0 or 1"),
    ("scale_list", (1, 2, 3, 2), "steps of 0 or 1"),
    ("scale_list", (1, 2, 3), "one level per flow"),
    ("image_size", 64, "coarsest map is 16×16"),
    ("bn_after", False, "use True"),
    ("step_mode", "lg", "use 'even'"),
    ("block_step", 0, "positive integer"),
]


def test_odd_half_growth_rejected() -> None:
    """g·gr[s] must be even for s >= 1: gr_factor (1, 3, 4) with g = 5 gives 15."""
    base = get_model_config("msdnet_fmnist")
    with pytest.raises(ValueError, match=r"growth_rate.*gr_factor\[1\] = 15 is odd"):
        dataclasses.replace(base, growth_rate=5, gr_factor=(1, 3, 4), bn_factor=(1, 3, 4))


@pytest.mark.parametrize(("field", "value", "message"), MSD_BAD)
def test_bad_msdnet_config(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"MSDNetConfig.{field}=.*{message}"):
        dataclasses.replace(get_model_config("msdnet_cifar"), **{field: value})


@pytest.mark.parametrize(("field", "value", "message"), RANET_BAD)
def test_bad_ranet_config(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"RANetConfig.{field}=.*{message}"):
        dataclasses.replace(get_model_config("ranet_cifar"), **{field: value})


def test_configs_are_frozen_and_hashable() -> None:
    config = get_model_config("ranet_cifar")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.step = 3  # type: ignore[misc]
    assert hash(config) == hash(get_model_config("ranet_cifar"))
    assert isinstance(config, RANetConfig) and isinstance(config.build(10), RANet)
    assert isinstance(get_model_config("msdnet_cifar"), MSDNetConfig)


# --------------------------------------------------------------------------- architecture


def test_msdnet_cifar_base_widths(models) -> None:
    model = models("msdnet_cifar")
    assert isinstance(model, MSDNet)
    assert model.base_widths == [22, 34, 52, 76, 65, 50, 92]


def test_msdnet_layer_one_example() -> None:
    """shared/spec/backbones.md §2 example: layer 1 outputs 22, 44, 88 channels at 32, 16, 8."""
    model = create_model("msdnet_cifar", 10)
    with torch.no_grad():
        maps = model.stages[0].layers[0](model.init_state(images(model, 1)))
    assert [tuple(t.shape[1:]) for t in maps] == [(22, 32, 32), (44, 16, 16), (88, 8, 8)]


def test_ranet_resizes_only_where_sizes_differ(monkeypatch, models) -> None:
    """Same-size resizes are the identity and are skipped; the others still run."""
    calls = []

    def checked_resize(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[-2:])
        assert x.shape[-2:] != ref.shape[-2:]
        return torch.nn.functional.interpolate(
            x, size=ref.shape[-2:], mode="bilinear", align_corners=True
        )

    monkeypatch.setattr(ranet, "resize_to", checked_resize)
    model = models("ranet_cifar")
    with torch.no_grad():
        model(images(model, 1))
    assert calls


def test_ranet_init() -> None:
    """He-normal fan-out in flows and heads, zero Linear bias, PyTorch default stem."""
    torch.manual_seed(0)
    model = create_model("ranet_cifar", 10)
    for conv in (m for m in model.stages.modules() if isinstance(m, nn.Conv2d)):
        if conv.weight.numel() >= 20000:
            fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
            assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    assert all(head.classifier.bias.abs().max() == 0 for head in model.heads)
    stem_conv = model.stem.layers[0].conv
    bound = 1 / (stem_conv.weight[0].numel() ** 0.5)  # kaiming-uniform(a=√5) bound
    assert stem_conv.weight.abs().max() <= bound


def test_msdnet_keeps_pytorch_default_init() -> None:
    model = create_model("msdnet_fmnist", 10)
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        assert conv.weight.abs().max() <= 1 / (conv.weight[0].numel() ** 0.5)
    assert all(head.classifier.bias.abs().max() > 0 for head in model.heads)


# --------------------------------------------------------------------------- interface


@pytest.mark.parametrize("name", SMALL)
def test_staged_forward_with_dropping_matches_full(name: str, models) -> None:
    """Real early exit: remove samples after every exit; kept samples' logits are unchanged."""
    model = models(name)
    x = images(model, 9)
    with torch.no_grad():
        full_logits, full_features = model(x, return_features=True)
        state, kept = model.init_state(x), torch.arange(9)
        for k in range(model.num_exits):
            state, features, logits = model.forward_stage(k, state)
            torch.testing.assert_close(logits, full_logits[k][kept], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(features, full_features[k][kept], rtol=1e-5, atol=1e-5)
            keep = torch.ones(len(kept), dtype=torch.bool)
            keep[k % len(kept)] = False  # drop one sample, alternating mask / index forms
            index = keep if k % 2 else keep.nonzero().squeeze(1)
            state, kept = model.select_state(state, index), kept[index]
            assert all(t.shape[0] == len(kept) for t in state)


@pytest.mark.parametrize("name", SMALL)
def test_states_of_two_batches_joined_continue_as_one_batch(name: str, models) -> None:
    """Pooled early exit: halves run to exit 1 apart, joined (`concat_states`), then on
    together, give the full batch's later logits; RANet's shared tensors stay shared."""
    model = models(name)
    x = images(model, 6)
    with torch.no_grad():
        full_logits = model(x)
        halves = []
        for part in (x[:2], x[2:]):
            state, _, _ = model.forward_stage(0, model.init_state(part))
            halves.append(state)
        state = concat_states(halves)
        assert len({id(t) for t in state}) == len({id(t) for t in halves[0]})
        for k in range(1, model.num_exits):
            state, _, logits = model.forward_stage(k, state)
            torch.testing.assert_close(logits, full_logits[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_return_features_leaves_logits_unchanged(name: str, models) -> None:
    model = models(name)
    x = images(model, 3)
    with torch.no_grad():
        plain = model(x)
        logits, features = model(x, return_features=True)
        expected = [head.classifier(f) for head, f in zip(model.heads, features, strict=True)]
    for a, b, c in zip(plain, logits, expected, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("name", SMALL)
def test_eval_is_deterministic(name: str, models) -> None:
    model = models(name)
    x = images(model, 2)
    with torch.no_grad():
        first, second = model(x), model(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("name", ["msdnet_cifar", "ranet_cifar", "msdnet_fmnist"])
def test_fold_batchnorm_matches_eval(name: str) -> None:
    torch.manual_seed(1)
    model = create_model(name, 10)
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = images(model, 4)
    with torch.no_grad():
        for a, b in zip(model(x), folded(x), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


@pytest.mark.parametrize("name", TINY)
def test_channels_last_matches(name: str, models) -> None:
    model = models(name)
    x = images(model, 2)
    with torch.no_grad():
        reference = model(x)
        fast = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    for a, b in zip(reference, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_training_step_reaches_every_parameter(name: str) -> None:
    """One summed-loss backward in train mode: no parameter is left without a gradient."""
    model = create_model(name, 10).train()
    x = images(model, 4)
    loss = sum(torch.nn.functional.cross_entropy(o, torch.arange(4)) for o in model(x))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
