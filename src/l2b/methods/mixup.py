"""Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018).

Each batch is mixed with a shuffled copy of itself: x = lam * x_i + (1 - lam) * x_j with one
lam ~ Beta(alpha, alpha) per batch, and the loss is lam * CE(z, y_i) + (1 - lam) * CE(z, y_j)
(Eq. 1 of the paper, with the labels' convex combination written as two cross-entropies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Method, StepOutput, register


@register
class Mixup(Method):
    name = "mixup"
    options = {"alpha": 1.0}

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        if float(self.opts["alpha"]) <= 0:
            raise ValueError(f"mixup alpha must be > 0, got {self.opts['alpha']}")
        self.beta = torch.distributions.Beta(float(self.opts["alpha"]), float(self.opts["alpha"]))

    def loss(self, batch: Batch) -> StepOutput:
        lam = float(self.beta.sample())
        perm = torch.randperm(len(batch.y), device=batch.x.device)
        logits = self.model(lam * batch.x + (1.0 - lam) * batch.x[perm])
        loss = lam * F.cross_entropy(logits, batch.y) + (1.0 - lam) * F.cross_entropy(logits, batch.y[perm])
        return StepOutput(loss, extra={"lam": lam, "perm": perm})
