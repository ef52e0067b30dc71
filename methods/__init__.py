"""Methods: train-time algorithms, post-hoc methods and exit rules.

Every module of this folder is imported here, so a new method is one new file
that registers itself with `@register_train_method`, `@register_posthoc_method` or
`@register_exit_rule`.
"""

import importlib
import pkgutil

from eebench.methods.base import (
    EXIT_RULES,
    POSTHOC_METHODS,
    TRAIN_METHODS,
    Display,
    ExitOutput,
    ExitRule,
    HyperparameterError,
    PostHocMethod,
    TrainContext,
    TrainMethod,
    method_class,
    method_kind,
    register_exit_rule,
    register_posthoc_method,
    register_train_method,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "EXIT_RULES",
    "POSTHOC_METHODS",
    "TRAIN_METHODS",
    "Display",
    "ExitOutput",
    "ExitRule",
    "HyperparameterError",
    "PostHocMethod",
    "TrainContext",
    "TrainMethod",
    "method_class",
    "method_kind",
    "register_exit_rule",
    "register_posthoc_method",
    "register_train_method",
]
