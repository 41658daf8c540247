"""PreActResNet-18, laid out exactly as the L2B authors' ``models/PreResNet.py`` (yuyinzhou/L2B,
itself the DivideMix file).

A bare 3x3 stem convolution (no BN or ReLU after it), pre-activation basic blocks [2, 2, 2, 2]
with strides 1, 2, 2, 2, then straight to average pooling and the linear classifier: there is
NO BatchNorm or ReLU after the last block. Parameter names, shapes and count equal the authors'
(11,171,146 parameters at 10 classes; tests/test_models.py). The authors pool with
``avg_pool2d(out, 4)``, which on 32x32 inputs is the mean over the 4x4 map; we take the global
mean, identical there and defined for other input sizes too.

``forward_features(x)`` returns the pooled 512-d features and ``head`` is the classifier, so
``model(x) == model.head(model.forward_features(x))`` (MLC's label-correction net reads them).

Reference: He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_guard import guard_strided_1x1


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            # a Sequential of one conv, so that the name is "shortcut.0.weight" as in the reference
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the reference code.
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**i
            layers.append(nn.Sequential(PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes
        guard_strided_1x1(self)  # the narrow shortcuts' weight gradient on the CPU (cpu_guard.py)

    @property
    def head(self) -> nn.Module:
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.forward_features(x))
