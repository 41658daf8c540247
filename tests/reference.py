"""Shared pieces of the reference-step tests: a tiny BatchNorm CNN and real digit batches in
float64. The reference steps themselves are transcribed in tests/test_reference_steps.py."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyBNCNN(nn.Module):
    """conv - BN - ReLU - pool - linear on 8x8 digits; features + head like the library's models."""

    def __init__(self, num_classes: int = 10, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.linear = nn.Linear(width * 16, num_classes)

    @property
    def head(self) -> nn.Module:
        return self.linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.forward_features(x))


def digit_batches(n: int = 32, m: int = 16, steps: int = 2, noise: float = 0.4, seed: int = 0):
    """``steps`` noisy batches (x, y_noisy) of real digits and as many clean ones (x_val, y_val),
    float64, standardised."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(d.target))
    x = torch.tensor(d.images[order] / 16.0 - 0.3, dtype=torch.float64)[:, None]
    y = torch.tensor(d.target[order], dtype=torch.int64)
    noisy = y.clone()
    flip = torch.tensor(rng.random(len(y)) < noise)
    noisy[flip] = torch.tensor(rng.integers(0, 10, int(flip.sum())))
    out = []
    for s in range(steps):
        a, b = s * n, (s + 1) * n
        c = steps * n + s * m
        out.append((x[a:b], noisy[a:b], x[c:c + m], y[c:c + m]))
    return out


def model_pair(seed: int = 0, **kw):
    """Two float64 copies of the same freshly initialised tiny CNN."""
    torch.manual_seed(seed)
    a = TinyBNCNN(**kw).double()
    b = TinyBNCNN(**kw).double()
    b.load_state_dict(a.state_dict())
    return a, b


def assert_same_parameters(ours: nn.Module, reference: nn.Module, rtol: float = 1e-8) -> None:
    """Every parameter equal to ``rtol`` relative (in the max norm of the tensor)."""
    ref = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        q = ref[name]
        err = (p.detach() - q.detach()).abs().max().item()
        scale = max(q.detach().abs().max().item(), 1e-12)
        assert err <= rtol * scale, f"{name}: max difference {err:.3e} (scale {scale:.3e})"


def changed(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
