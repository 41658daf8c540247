"""Small models for the offline datasets: an MLP for 8x8 digits and a CNN for 28x28 images.

Like every registered model they offer ``forward_features(x)`` and ``head`` (timm's split), with
``model(x) == model.head(model.forward_features(x))``."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, then ``depth`` hidden ReLU layers of ``hidden`` units, then a linear classifier."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
        hidden: int = 128, depth: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.num_features = width

    @property
    def head(self) -> nn.Module:
        return self.net[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (what ``head`` classifies)."""
        for layer in self.net[:-1]:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool stages and a linear head: fast on a CPU for 28x28 inputs."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(stage(in_channels, width), stage(width, 2 * width))
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes)
        )
        self.num_features = 2 * width

    @property
    def head(self) -> nn.Module:
        return self.classifier[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features (what ``head`` classifies)."""
        return self.classifier[1](self.classifier[0](self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
