"""Per-exit FLOPs and parameters in the MSDNet counting convention (the project spec,
shared/spec/backbones.md §4).

fvcore traces one batch-1 forward in eval mode; its handlers are overridden so that
conv and Linear count multiply-accumulates (Linear plus its bias add), activations
and pools count elements, and BatchNorm and resizes count nothing. Per-exit numbers
are cumulative sums over the model's exit units (stem, stage k, head k).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

with warnings.catch_warnings():  # fvcore scripts a helper at import; torch deprecates that
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from fvcore.nn import FlopCountAnalysis, parameter_count
    from fvcore.nn.jit_handles import get_shape, linear_flop_jit

from eebench.backbones.common import MultiExitNet
from eebench.backbones.factory import create_model, list_models

Handle = Callable[[list[Any], list[Any]], int]

TABLE_COLUMNS = ["config", "num_classes", "exit", "mflops", "params"]


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    """Free ops. fvcore's default handlers would count BN and resizes; None only ignores."""
    return 0


def _input_elements(inputs: list[Any], outputs: list[Any]) -> int:
    """Activations: one op per input element (fvcore ignores ReLU, has no GELU rule)."""
    return math.prod(get_shape(inputs[0]))


def _kernel_size(value: Any) -> list[int]:
    """Pool kernel from a traced int-list argument (a constant or a list of constants)."""
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        kernel = [v.toIValue() for v in node.inputs()]
    else:
        kernel = value.toIValue()
    kernel = list(kernel) if isinstance(kernel, list | tuple) else [kernel]
    return kernel * 2 if len(kernel) == 1 else kernel


def _pool(inputs: list[Any], outputs: list[Any]) -> int:
    """k×k pooling: k·k ops per output element."""
    return math.prod(get_shape(outputs[0])) * math.prod(_kernel_size(inputs[1]))


def _linear(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore's MACs plus one add per output element when there is a bias."""
    has_bias = len(inputs) > 2 and get_shape(inputs[2]) is not None
    bias_adds = math.prod(get_shape(outputs[0])) if has_bias else 0
    return linear_flop_jit(inputs, outputs) + bias_adds


HANDLES: dict[str, Handle] = {
    "aten::batch_norm": _zero,
    "aten::upsample_bilinear2d": _zero,
    "aten::relu": _input_elements,
    "aten::relu_": _input_elements,
    "aten::gelu": _input_elements,
    "aten::sigmoid": _input_elements,
    "aten::max_pool2d": _pool,
    "aten::avg_pool2d": _pool,
    "aten::linear": _linear,
}


def _analysis(module: nn.Module, inputs: tuple[torch.Tensor, ...], what: str) -> FlopCountAnalysis:
    """Trace `module` on `inputs` (eval mode, restored afterwards) with this convention's rules."""
    was_training = module.training
    module.eval()
    try:
        analysis = FlopCountAnalysis(module, inputs)
        for name, handle in HANDLES.items():
            analysis.set_op_handle(name, handle)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.by_module()  # run the trace now, while in eval mode
    finally:
        module.train(was_training)
    unsupported = analysis.unsupported_ops()
    if unsupported:  # an unsupported op would silently count 0
        raise RuntimeError(f"fvcore cannot count ops {dict(unsupported)} in {what}")
    return analysis


def count_flops(model: MultiExitNet) -> FlopCountAnalysis:
    """Trace one zero image through `model`."""
    return _analysis(model, (torch.zeros(1, *model.input_shape),), model.config_name)


def module_mflops(module: nn.Module, *inputs: torch.Tensor) -> float:
    """MFLOPs of one call of a method's own module (a gater, a gate, an extra head), counted
    like the backbones, so that its cost adds to theirs on the same scale."""
    return _analysis(module, inputs, type(module).__name__).total() / 1e6


def exit_costs(model: MultiExitNet) -> list[tuple[float, int]]:
    """Cumulative (MFLOPs, parameters) up to and including each exit, batch 1."""
    by_module = count_flops(model).by_module()
    params = parameter_count(model)
    costs, flops, n_params = [], 0, 0
    for units in model.exit_units():
        flops += sum(by_module[unit] for unit in units)
        n_params += sum(params[unit] for unit in units)
        costs.append((flops / 1e6, n_params))
    # every op and parameter must sit in some exit unit, or the per-exit sums miss it
    if flops != by_module[""] or n_params != params[""]:
        raise RuntimeError(f"{model.config_name}: costs outside the exit units")
    return costs


@functools.cache
def registered_exit_costs(config_name: str, num_classes: int) -> tuple[tuple[float, int], ...]:
    """`exit_costs` of a registered config, counted once per process.

    The model it builds for counting draws its initial weights from a forked RNG: drawn
    from the global one, the first call in a process (and only the first: it is cached)
    would shift every random number after it, e.g. a gater's initial weights built after
    the costs are read, so that two identical runs in one process would differ.
    """
    with torch.random.fork_rng(devices=[]):
        return tuple(exit_costs(create_model(config_name, num_classes)))


def exit_mflops(config_name: str, num_classes: int) -> np.ndarray:
    """Cumulative MFLOPs per exit (K,), float64: the cost vector budgeted methods need."""
    return np.array([mflops for mflops, _ in registered_exit_costs(config_name, num_classes)])


def flops_table(
    class_counts: Iterable[int] = (10, 100, 1000), configs: Iterable[str] | None = None
) -> pd.DataFrame:
    """One row per (config, num_classes, exit), exit 1-based, full-precision MFLOPs."""
    rows = [
        (name, classes, k, mflops, n_params)
        for name in (list_models() if configs is None else configs)
        for classes in class_counts
        for k, (mflops, n_params) in enumerate(registered_exit_costs(name, classes), 1)
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
