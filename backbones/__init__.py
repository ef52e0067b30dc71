"""Multi-exit backbones (MSDNet, RANet) behind a timm-like registry.

    model = create_model("msdnet_cifar", 100)            # or activation="gelu"
    logits = model(images)                                # list of K (B, C) tensors
    logits, features = model(images, return_features=True)

FLOPs and parameter counts per exit live in `eebench.backbones.flops` (imports fvcore).
"""

from eebench.backbones import msdnet, ranet  # noqa: F401  (registers the configs)
from eebench.backbones.common import BackboneConfig, MultiExitNet, fold_batchnorm
from eebench.backbones.factory import (
    MODELS,
    create_model,
    get_model_config,
    list_models,
    register_model,
)
from eebench.backbones.msdnet import MSDNet, MSDNetConfig
from eebench.backbones.ranet import RANet, RANetConfig

__all__ = [
    "MODELS",
    "BackboneConfig",
    "MSDNet",
    "MSDNetConfig",
    "MultiExitNet",
    "RANet",
    "RANetConfig",
    "create_model",
    "fold_batchnorm",
    "get_model_config",
    "list_models",
    "register_model",
]
