"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

Each batch is mixed with a shuffled copy of itself: x = lam * x_i + (1 - lam) * x_j with one
lam ~ Beta(alpha, alpha) per batch, and the loss is lam * CE(z, y_i) + (1 - lam) * CE(z, y_j)
(Eq. 1 of the paper, with the labels' convex combination written as two cross-entropies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass

from .base import Batch, Method, StepOutput, register
from .options import option


@dataclass
class MixupOptions:
    alpha: float = option(1.0, "lam ~ Beta(alpha, alpha), one lam per batch", check=lambda v: v > 0 or "must be > 0")


@register
class Mixup(Method):
    name = "mixup"
    Options = MixupOptions

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.beta = torch.distributions.Beta(self.options.alpha, self.options.alpha)

    def loss(self, batch: Batch) -> StepOutput:
        lam = float(self.beta.sample())
        perm = torch.randperm(len(batch.y), device=batch.x.device)
        logits = self.model(lam * batch.x + (1.0 - lam) * batch.x[perm])
        loss = lam * F.cross_entropy(logits, batch.y) + (1.0 - lam) * F.cross_entropy(logits, batch.y[perm])
        return StepOutput(loss, extra={"lam": lam, "perm": perm})
