"""timm-like model registry: configs are registered by name and built on demand.

A registered entry is a zero-argument function returning a frozen config, so looking a
config up (for run records, FLOPs tables) never builds a network.
"""

from __future__ import annotations

from collections.abc import Callable

from eebench.backbones.common import BackboneConfig, MultiExitNet
from eebench.pipelines.services.registry import Registry

ConfigFactory = Callable[[], BackboneConfig]

MODELS: Registry[ConfigFactory] = Registry("backbone config")


def register_model(factory: ConfigFactory) -> ConfigFactory:
    """Decorator: register a config factory under its function name."""
    return MODELS.register()(factory)


def list_models() -> list[str]:
    """Names of all registered backbone configs, sorted."""
    return MODELS.names()


def get_model_config(name: str) -> BackboneConfig:
    """The frozen config registered as `name`; unknown names list the registered ones."""
    config = MODELS.get(name)()
    if config.name != name:  # the run record names the model by config.name
        raise ValueError(f"config factory {name!r} returns a config named {config.name!r}")
    return config


def create_model(name: str, num_classes: int, *, activation: str = "relu") -> MultiExitNet:
    """Build the registered config `name` with a `num_classes`-way classifier at every exit."""
    return get_model_config(name).build(num_classes, activation)
