"""Errors that are the user's to fix: the CLI prints their message without a traceback."""

from __future__ import annotations

import re

# YAML 1.1 (PyYAML) reads 1e9, 1.0e9 and 1e-3 as text: a float with an exponent needs a
# dot and a signed exponent, 1.0e+9.
_YAML_STRING_FLOAT = re.compile(r"^[-+]?\d+(\.\d*)?[eE][-+]?\d+$")


def number_hint(value: object) -> str:
    """Advice for a number that YAML read as a string ('' for anything else)."""
    if isinstance(value, str) and _YAML_STRING_FLOAT.match(value.strip()):
        mantissa, _, exponent = value.strip().lower().partition("e")
        mantissa = mantissa if "." in mantissa else f"{mantissa}.0"
        exponent = exponent if exponent[0] in "+-" else f"+{exponent}"
        fixed = f"{mantissa}e{exponent}"
        return f" (YAML reads {value} as text: write {fixed})"
    return ""


def user_errors() -> tuple[type[BaseException], ...]:
    from eebench.methods.base import HyperparameterError, MethodContractError
    from eebench.pipelines.data.datasets import DatasetFormatError, DatasetNotFoundError
    from eebench.pipelines.data.splits import SplitFileError
    from eebench.pipelines.evaluation.infer import DecisionNotFoundError
    from eebench.pipelines.evaluation.outputs import OutputsFormatError
    from eebench.pipelines.services.io import DamagedFileError, WriteError
    from eebench.pipelines.services.lock import RunLockedError
    from eebench.pipelines.services.registry import UnknownNameError
    from eebench.pipelines.training.checkpoint import CorruptCheckpointError
    from eebench.pipelines.training.engine import NonFiniteLossError
    from eebench.pipelines.workflow.config import ConfigError
    from eebench.pipelines.workflow.fingerprint import RunConfigChangedError

    return (
        ConfigError,
        HyperparameterError,
        MethodContractError,
        UnknownNameError,
        DatasetNotFoundError,
        DatasetFormatError,
        SplitFileError,
        CorruptCheckpointError,
        NonFiniteLossError,
        OutputsFormatError,
        RunConfigChangedError,
        RunLockedError,
        DecisionNotFoundError,
        DamagedFileError,
        WriteError,
        FileNotFoundError,
        PermissionError,
    )
