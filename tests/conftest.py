from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from l2b.models import MLP, PreActResNet18

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one torch thread per test worker, and per process a test starts: two workers of two threads
    # each on two cores run many times slower than one thread each
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class FrozenStem(nn.Module):
    """A conv + BN stem whose first conv is frozen, then a trainable head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stem.requires_grad_(False)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, num_classes))

    def forward(self, x):
        return self.head(self.bn(self.stem(x)))


def make_model(kind: str, num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        return MLP(num_classes=num_classes, in_channels=3, image_size=6, hidden=16)
    if kind == "preact":
        return PreActResNet18(num_classes=num_classes, width=4)
    if kind == "frozen":
        return FrozenStem(num_classes)
    raise ValueError(kind)


def make_batches(n: int = 8, m: int = 6, num_classes: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.get_default_dtype()
    x = torch.randn(n, 3, 6, 6, generator=g, dtype=dtype)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x_val = torch.randn(m, 3, 6, 6, generator=g, dtype=dtype)
    y_val = torch.randint(0, num_classes, (m,), generator=g)
    return x, y, x_val, y_val


def twin(model: nn.Module, optimizer: torch.optim.Optimizer | None = None):
    """An independent copy of a model and of its optimizer (momentum buffers included)."""
    return copy.deepcopy((model, optimizer))
