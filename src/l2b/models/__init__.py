"""Model registry: ``create_model(name, num_classes=..., in_channels=..., **kwargs)``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from .preact_resnet import PreActResNet18
from .small import MLP, SmallCNN

MODELS: dict[str, Callable[..., nn.Module]] = {
    "preact-resnet18": PreActResNet18,
    "small-cnn": SmallCNN,
    "mlp": MLP,
}


def create_model(name: str, *, num_classes: int, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered model by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = ["MODELS", "create_model", "PreActResNet18", "MLP", "SmallCNN"]
