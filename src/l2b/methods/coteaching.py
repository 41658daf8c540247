"""Co-teaching (Han et al., "Co-teaching: Robust Training of Deep Neural Networks with Extremely
Noisy Labels", NeurIPS 2018).

Two networks of the same architecture train together: each keeps the R(T) share of the batch on
which it has the smallest loss, and its PEER is updated on those samples (their Algorithm 1).
R(T) = 1 - tau * min(T / T_k, 1) with T the epoch, tau the forget rate (``forget_rate``, ideally
the noise rate) and T_k = ``num_gradual`` epochs. The trainer's model is the first network; the
second is this method's, with an SGD of the same settings following the same learning rate.
Evaluation and checkpoints use the first network. Under torchrun each rank selects within its
shard and the peer's gradients are averaged across ranks, so both networks stay identical on every
rank.
"""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F

from dataclasses import dataclass

from .base import Batch, Method, StepOutput, register
from .options import option


@dataclass
class CoTeachingOptions:
    forget_rate: float = option(0.2, "share of each batch dropped as probably noisy (tau; ideally the noise rate)",
                                check=lambda v: 0.0 <= v < 1.0 or "must be in [0, 1)")
    num_gradual: int = option(10, "epochs over which the dropped share grows from 0 to forget_rate (T_k)",
                              check=lambda v: v >= 0 or "must be >= 0")


@register
class CoTeaching(Method):
    name = "coteaching"
    Options = CoTeachingOptions
    checkpointed = ("peer", "peer_opt")

    def owned_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.peer_opt]  # the peer network's, stepped in loss()

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.peer = copy.deepcopy(model)
        for p in self.peer.parameters():  # a differently initialised peer
            if p.dim() > 1:
                torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)
        # the same optimizer for the peer (its defaults, less any its constructor does not take:
        # AdamW keeps decoupled_weight_decay among them, fixed by its class)
        takes = inspect.signature(type(optimizer)).parameters
        self.peer_opt = type(optimizer)(self.peer.parameters(),
                                        **{k: v for k, v in optimizer.defaults.items() if k in takes})

    def keep_ratio(self, epoch: float) -> float:
        tau, tk = self.options.forget_rate, max(float(self.options.num_gradual), 1e-12)
        return 1.0 - tau * min(int(epoch) / tk, 1.0)

    def loss(self, batch: Batch) -> StepOutput:
        self.peer.train(self.model.training)
        logits, peer_logits = self.model(batch.x), self.peer(batch.x)
        loss_a = F.cross_entropy(logits, batch.y, reduction="none")
        loss_b = F.cross_entropy(peer_logits, batch.y, reduction="none")
        keep = max(1, int(round(self.keep_ratio(batch.epoch) * len(batch.y))))
        small_a = torch.argsort(loss_a.detach())[:keep]  # what the first network trusts
        small_b = torch.argsort(loss_b.detach())[:keep]  # what the peer trusts
        # cross update: the peer learns from the first network's selection, and vice versa
        for group, main in zip(self.peer_opt.param_groups, self.optimizer.param_groups):
            group["lr"] = main["lr"]
        self.peer_opt.zero_grad(set_to_none=True)
        loss_b[small_a].mean().backward()
        # under torchrun: keep the peer identical on every rank (each rank selects locally)
        self.all_reduce_grads(self.peer.parameters(), op="mean")
        self.peer_opt.step()
        n = len(batch.y)
        alpha = torch.zeros(n, device=batch.x.device)
        alpha[small_b] = 1.0 / keep
        return StepOutput(loss_a[small_b].mean(), alpha=alpha, beta=torch.zeros_like(alpha))
