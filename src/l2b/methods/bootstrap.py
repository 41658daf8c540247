"""Bootstrapping (Reed et al., "Training Deep Neural Networks on Noisy Labels with
Bootstrapping", ICLR 2015 workshop), the fixed-beta ancestor of L2B (paper Eq. 2).

soft: target t = beta * onehot(y) + (1 - beta) * p, p = softmax(z), loss = -sum_k t_k log p_k.
hard: target t = beta * onehot(y) + (1 - beta) * onehot(argmax p).
The default is HARD with beta = 0.8: the L2B paper's Eq. 2 and its footnote. Reed et al.'s soft
form used beta = 0.95 (``mode=soft beta=0.95``). In the soft form the prediction inside the target is NOT
detached: -sum_k (beta y_k + (1 - beta) p_k) log p_k = beta CE(y) + (1 - beta) H(p), the
"minimum-entropy regularisation" Reed et al. describe. (Detaching it would make the gradient
beta (p - y), i.e. plain CE scaled by beta.) The hard target is piecewise constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataclasses import dataclass

from .base import Batch, Method, StepOutput, register, soft_cross_entropy
from .options import option


def bootstrap_target(logits: torch.Tensor, y: torch.Tensor, beta: float, mode: str) -> torch.Tensor:
    p = torch.softmax(logits if mode == "soft" else logits.detach(), dim=1)
    if mode == "hard":
        p = F.one_hot(p.argmax(dim=1), logits.shape[1]).to(p)
    return beta * F.one_hot(y, logits.shape[1]).to(p) + (1.0 - beta) * p


@dataclass
class BootstrapOptions:
    beta: float = option(0.8, "weight of the observed label in the target (Reed et al.'s soft form: 0.95)",
                         check=lambda v: 0.0 <= v <= 1.0 or "must be in [0, 1]")
    mode: str = option("hard", "hard: the prediction's argmax in the target (paper Eq. 2) | soft: the prediction",
                       choices=("hard", "soft"))


@register
class Bootstrap(Method):
    name = "bootstrap"
    Options = BootstrapOptions

    def loss(self, batch: Batch) -> StepOutput:
        logits = self.model(batch.x)
        beta = self.options.beta
        target = bootstrap_target(logits, batch.y, beta, self.options.mode)
        loss = soft_cross_entropy(logits, target).mean()
        n = len(batch.y)
        return StepOutput(
            loss,
            alpha=torch.full((n,), beta / n, device=logits.device),
            beta=torch.full((n,), (1.0 - beta) / n, device=logits.device),
            pseudo_labels=logits.detach().argmax(dim=1),
        )
