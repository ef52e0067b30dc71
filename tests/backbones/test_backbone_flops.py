"""Per-exit MFLOPs and parameters against the project spec (shared/spec/backbones.md §5),
and the counting rules of its §4.

Each config is fully counted at the class counts in FULL_COUNTS; the other class counts
are derived with the exact rule that each head's Linear adds (d_k + 1)·ΔC to both
numbers (the rule itself is checked wherever two class counts are fully counted).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eebench.backbones import create_model, list_models
from eebench.backbones.flops import (
    TABLE_COLUMNS,
    count_flops,
    exit_costs,
    exit_mflops,
    flops_table,
    registered_exit_costs,
)

CLASS_COUNTS = (10, 100, 1000)

# shared/spec/backbones.md §5: per exit, MFLOPs for 10/100/1000 classes, then params for
# 10/100/1000.
EXPECTED: dict[str, list[tuple[float, float, float, int, int, int]]] = {
    "msdnet_cifar": [
        (6.848, 6.860, 6.976, 288094, 299704, 415804),
        (14.327, 14.350, 14.582, 626520, 649740, 881940),
        (27.257, 27.291, 27.640, 1076558, 1111388, 1459688),
        (48.402, 48.449, 48.913, 1680760, 1727200, 2191600),
        (76.375, 76.433, 77.013, 2326918, 2384968, 2965468),
        (108.781, 108.851, 109.547, 2982584, 3052244, 3748844),
        (137.200, 137.281, 138.094, 3885394, 3966664, 4779364),
    ],
    "msdnet_cifar_anytime": [
        (15.129, 15.140, 15.257, 422266, 433876, 549976),
        (25.483, 25.506, 25.738, 853572, 876792, 1108992),
        (37.061, 37.096, 37.444, 1240122, 1274952, 1623252),
        (46.285, 46.331, 46.795, 1649108, 1695548, 2159948),
        (57.277, 57.336, 57.916, 2120302, 2178352, 2758852),
        (66.891, 66.961, 67.657, 2533592, 2603252, 3299852),
        (75.856, 75.938, 76.750, 2986690, 3067960, 3880660),
    ],
    "msdnet_imagenet_step4": [
        (339.522, 339.556, 339.903, 3857354, 3892004, 4238504),
        (684.694, 684.764, 685.457, 8009940, 8079240, 8772240),
        (1007.044, 1007.145, 1008.156, 11961502, 12062572, 13073272),
        (1253.059, 1253.187, 1254.473, 15334696, 15463216, 16748416),
        (1358.561, 1358.740, 1360.530, 21989330, 22168340, 23958440),
    ],
    "msdnet_imagenet_step7": [
        (615.122, 615.174, 615.693, 8188010, 8239940, 8759240),
        (1435.186, 1435.296, 1436.392, 18949076, 19058696, 20154896),
        (2281.401, 2281.566, 2283.210, 29921310, 30085740, 31730040),
        (2965.089, 2965.301, 2967.421, 39527848, 39739888, 41860288),
        (3250.495, 3250.795, 3253.794, 59014802, 59314772, 62314472),
    ],
    "ranet_cifar": [
        (15.814, 15.826, 15.942, 470442, 482052, 598152),
        (31.283, 31.306, 31.539, 1073780, 1097000, 1329200),
        (44.655, 44.690, 45.039, 1476756, 1511586, 1859886),
        (50.358, 50.405, 50.869, 1868414, 1914854, 2379254),
        (60.655, 60.713, 61.293, 2165612, 2223662, 2804162),
        (63.648, 63.718, 64.414, 2453494, 2523154, 3219754),
        (90.174, 90.255, 91.068, 2871636, 2952906, 3765606),
        (94.905, 94.997, 95.926, 3261830, 3354710, 4283510),
    ],
    "ranet_imagenet": [
        (434.207, 434.277, 434.969, 13322122, 13391332, 14083432),
        (886.640, 886.825, 888.670, 46047636, 46232136, 48077136),
        (1150.617, 1150.866, 1153.356, 57363918, 57612948, 60103248),
        (1348.747, 1349.083, 1352.449, 74956576, 75293176, 78659176),
        (2275.245, 2275.669, 2279.914, 96282642, 96707082, 100951482),
        (2582.585, 2583.121, 2588.474, 124281920, 124817240, 130170440),
        (3229.046, 3229.634, 3235.518, 132623508, 133211838, 139095138),
        (3326.303, 3326.956, 3333.485, 141962726, 142615586, 149144186),
    ],
    "msdnet_fmnist": [
        (2.558, 2.570, 2.686, 216186, 227796, 343896),
        (6.012, 6.035, 6.267, 471188, 494408, 726608),
        (9.517, 9.552, 9.901, 714822, 749652, 1097952),
        (12.357, 12.403, 12.867, 938720, 985160, 1449560),
    ],
    "ranet_fmnist": [
        (3.026, 3.037, 3.154, 244002, 255612, 371712),
        (6.752, 6.775, 7.008, 531820, 555040, 787240),
        (9.643, 9.678, 10.026, 763808, 798638, 1146938),
        (11.519, 11.566, 12.030, 951606, 998046, 1462446),
    ],
}

FULL_COUNTS = {name: ((1000,) if "imagenet" in name else (10, 100)) for name in EXPECTED}


def expected(name: str, num_classes: int) -> list[tuple[float, int]]:
    col = CLASS_COUNTS.index(num_classes)
    return [(row[col], row[3 + col]) for row in EXPECTED[name]]


def rounded(costs: list[tuple[float, int]]) -> list[tuple[float, int]]:
    return [(round(mflops, 3), params) for mflops, params in costs]


def test_expected_table_covers_every_registered_config() -> None:
    assert sorted(EXPECTED) == list_models()


@pytest.mark.parametrize(
    ("name", "num_classes"), [(n, c) for n, counts in FULL_COUNTS.items() for c in counts]
)
def test_full_count_matches_spec(name: str, num_classes: int) -> None:
    assert rounded(list(registered_exit_costs(name, num_classes))) == expected(name, num_classes)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_other_class_counts_match_spec(name: str, models) -> None:
    """Shift a full count to every class count by the per-head Linear rule."""
    base = FULL_COUNTS[name][0]
    counted = registered_exit_costs(name, base)
    feature_dims = models(name).feature_dims
    for num_classes in CLASS_COUNTS:
        extra = np.cumsum([(d + 1) * (num_classes - base) for d in feature_dims])
        shifted = [(f + int(e) / 1e6, p + int(e)) for (f, p), e in zip(counted, extra, strict=True)]
        assert rounded(shifted) == expected(name, num_classes), num_classes


# shared/spec/backbones.md §4 whole-model totals by operator (ReLU is traced in place: relu_)
OP_TOTALS = {
    ("msdnet_cifar", 100): {
        "conv": 136475648,
        "relu_": 711424,
        "avg_pool2d": 3584,
        "linear": 90300,
    },
    ("ranet_fmnist", 10): {"conv": 11421461, "relu_": 90404, "avg_pool2d": 2048, "linear": 5160},
    ("msdnet_imagenet_step4", 1000): {
        "conv": 1353622016,
        "relu_": 4007504,
        "max_pool2d": 903168,
        "avg_pool2d": 7936,
        "linear": 1989000,
    },
}


@pytest.mark.parametrize(("name", "num_classes"), sorted(OP_TOTALS))
def test_whole_model_totals_by_operator(name: str, num_classes: int) -> None:
    """BN and bilinear resizes must count 0, ReLU and pools their elements."""
    by_op = count_flops(create_model(name, num_classes)).by_operator()
    assert dict(by_op) == OP_TOTALS[name, num_classes]


@pytest.mark.parametrize("name", ["msdnet_fmnist", "ranet_fmnist"])
def test_gelu_gives_the_same_costs(name: str) -> None:
    model = create_model(name, 10, activation="gelu")
    assert exit_costs(model) == list(registered_exit_costs(name, 10))
    assert "gelu" in count_flops(model).by_operator()


def test_counting_restores_training_mode() -> None:
    model = create_model("msdnet_fmnist", 10).train()
    exit_costs(model)
    assert model.training


def test_exit_mflops_vector() -> None:
    costs = exit_mflops("ranet_cifar", 100)
    assert costs.dtype == np.float64 and costs.shape == (8,)
    assert np.round(costs, 3).tolist() == [mflops for mflops, _ in expected("ranet_cifar", 100)]
    costs[0] = -1.0  # a caller's edit must not leak into the cache
    assert exit_mflops("ranet_cifar", 100)[0] > 0


def test_flops_table_layout() -> None:
    configs = ("msdnet_fmnist", "ranet_fmnist")
    table = flops_table((10, 100), configs=configs)
    assert list(table.columns) == TABLE_COLUMNS
    assert len(table) == 2 * (4 + 4)
    row = table.query("config == 'ranet_fmnist' and num_classes == 100 and exit == 4").iloc[0]
    assert (round(row.mflops, 3), row.params) == expected("ranet_fmnist", 100)[3]


def test_counting_costs_leaves_the_global_rng_alone() -> None:
    """The first (uncached) count builds a model; its weights must not come from the global
    RNG, or whatever a run draws after reading its costs would depend on the cache."""
    registered_exit_costs.cache_clear()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    exit_mflops("ranet_fmnist", 7)
    assert torch.equal(torch.get_rng_state(), before)
