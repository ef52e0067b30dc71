"""Errors that are the user's to fix: the CLI prints their message without a traceback."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    from eebench.methods.base import HyperparameterError
    from eebench.pipelines.checkpoint import CorruptCheckpointError
    from eebench.pipelines.config import ConfigError
    from eebench.pipelines.datasets import DatasetNotFoundError
    from eebench.pipelines.engine import NonFiniteLossError
    from eebench.pipelines.outputs import OutputsFormatError
    from eebench.pipelines.registry import UnknownNameError

    return (
        ConfigError,
        HyperparameterError,
        UnknownNameError,
        DatasetNotFoundError,
        CorruptCheckpointError,
        NonFiniteLossError,
        OutputsFormatError,
        FileNotFoundError,
    )
