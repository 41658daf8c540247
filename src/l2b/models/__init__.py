"""Model registry: ``create_model(name, num_classes=, in_channels=, image_size=, width=)``.

Every entry takes the same arguments (timm-style); ``width`` is the model's size knob (base
channels, or hidden units of the MLP) and ``None`` keeps its default.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .preact_resnet import PreActResNet18
from .small import MLP, SmallCNN


def _preact_resnet18(num_classes, in_channels, image_size, width):
    return PreActResNet18(num_classes, in_channels, width=width or 64)


def _small_cnn(num_classes, in_channels, image_size, width):
    return SmallCNN(num_classes, in_channels, width=width or 32)


def _mlp(num_classes, in_channels, image_size, width):
    return MLP(num_classes, in_channels, image_size=image_size, hidden=width or 128)


def _torchvision(arch: str):
    def build(num_classes, in_channels, image_size, width):
        try:
            import torchvision
        except ImportError:
            raise ImportError(f"{arch} needs torchvision: pip install 'l2b[torchvision]'") from None
        if width is not None:
            raise ValueError(f"{arch} has a fixed width; drop --width")
        model = getattr(torchvision.models, arch)(weights=None)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "preact-resnet18": _preact_resnet18,
    "small-cnn": _small_cnn,
    "mlp": _mlp,
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
}


def create_model(name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 width: int | None = None) -> nn.Module:
    """Build a registered model by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, in_channels, image_size, width)


__all__ = ["MODELS", "create_model", "PreActResNet18", "MLP", "SmallCNN"]
