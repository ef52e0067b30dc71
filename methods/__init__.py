"""Methods: train-time algorithms, post-hoc methods and exit rules.

Every module of this folder is imported here, so a new method is one new file
that registers itself with `@register_train_method`, `@register_posthoc_method` or
`@register_exit_rule`.
"""

import importlib
import logging
import pkgutil
from collections.abc import Iterable

from eebench.methods.base import (
    BROKEN_FILES,
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


def import_all(package: str, path: Iterable[str]) -> dict[str, str]:
    """Import every module of `package` but `base`; {'methods/x.py': error} of those that
    fail (a syntax error in one method file must not stop the studies that do not use it:
    a study naming its method says why it is missing)."""
    broken = {}
    for module in pkgutil.iter_modules(path):
        if module.name == "base":
            continue
        try:
            importlib.import_module(f"{package}.{module.name}")
        except Exception as error:  # any error of a user's file: reported, not raised
            file = f"methods/{module.name}.py"
            broken[file] = f"{type(error).__name__}: {error}"
            logging.getLogger(__name__).warning(
                "%s not loaded (%s); studies that use it stop", file, broken[file]
            )
    return broken


BROKEN_FILES.update(import_all(__name__, __path__))

__all__ = [
    "BROKEN_FILES",
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
    "import_all",
    "method_class",
    "method_kind",
    "register_exit_rule",
    "register_posthoc_method",
    "register_train_method",
]
