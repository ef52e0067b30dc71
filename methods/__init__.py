"""Methods: train-time algorithms, post-hoc calibrators and exit policies.

Every module of this folder is imported here, so a new method is one new file
that registers itself with `@register_train_method`, `@register_calibrator` or
`@register_exit_policy`.
"""

import importlib
import pkgutil

from eebench.methods.base import (
    CALIBRATORS,
    EXIT_POLICIES,
    TRAIN_METHODS,
    ExitPolicy,
    HyperparameterError,
    PostHocCalibrator,
    TrainContext,
    TrainMethod,
    method_kind,
    register_calibrator,
    register_exit_policy,
    register_train_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CALIBRATORS",
    "EXIT_POLICIES",
    "TRAIN_METHODS",
    "ExitPolicy",
    "HyperparameterError",
    "PostHocCalibrator",
    "TrainContext",
    "TrainMethod",
    "method_kind",
    "register_calibrator",
    "register_exit_policy",
    "register_train_method",
]
