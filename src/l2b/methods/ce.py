"""Cross-entropy on the (noisy) observed labels: the baseline every table starts from."""

from __future__ import annotations

import torch.nn.functional as F

from .base import Batch, Method, StepOutput, register


@register
class CrossEntropy(Method):
    name = "ce"

    def loss(self, batch: Batch) -> StepOutput:
        return StepOutput(F.cross_entropy(self.model(batch.x), batch.y))
