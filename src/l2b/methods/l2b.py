"""The meta-learned reweighting methods: L2B (Zhou et al.) and L2RW (Ren et al. 2018).

Both call :func:`l2b.meta_weights` once per step; L2RW is L2B's engine with the constraint
beta = 0 (Ren et al., "Learning to Reweight Examples for Robust Deep Learning", ICML 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..meta import bootstrap_loss, meta_weights
from ..step import virtual_step_source
from .base import Batch, Method, StepOutput, register

META_OPTIONS = {
    "normalize": "sum",  # sum (Eq. 9) | softmax (Eq. 14) | sigmoid (Eq. 13) | hard
    "temperature": 1.0,  # softmax / hard temperature (the paper uses 10 on ISIC)
    "threshold": None,  # hard: entries <= threshold are dropped (None: 1/2n)
    "constraint": None,  # None | alpha=0 | beta=0 | alpha+beta=1 (Table 7)
    "virtual_step": "optimizer",  # optimizer (authors' code) | sgd (paper Eq. 5)
    "engine": "jvp",  # jvp (exact first-order identity) | unroll (second-order reference)
    "mixup_alpha": 0.0,  # > 0: mixup inside L2B (the authors' --mixup option), lam ~ Beta(a, a)
    # mixup: the pseudo-label loss g on the mixed input against its own argmax, unmixed (authors'
    # main.py: cost2 = criterion(y_f_hat, pesudo_labels)), or "mixed" like f
    "mixup_pseudo": "plain",
    # clean batches: "cycle" through the clean set, reshuffled each pass; "random": a fresh random
    # batch each step (the authors' next(iter(metaloader)))
    "meta_sampling": "cycle",
}
META_CHOICES = {
    "normalize": ("sum", "softmax", "sigmoid", "hard", "isic"),
    "constraint": (None, "alpha=0", "beta=0", "alpha+beta=1"),
    "virtual_step": ("optimizer", "sgd"),
    "engine": ("jvp", "jvp-lean", "unroll"),
    "mixup_pseudo": ("plain", "mixed"),
    "meta_sampling": ("cycle", "random"),
}


def mixup_loss_fn(lam: float, perm: torch.Tensor):
    """Per-sample loss of a mixed input against the same mixture of two targets:
    lam * CE(z_i, t_i) + (1 - lam) * CE(z_i, t_perm(i)); used for both the observed labels (f)
    and the pseudo-labels (g) of Eq. 3."""

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (lam * F.cross_entropy(logits, targets, reduction="none")
                + (1.0 - lam) * F.cross_entropy(logits, targets[perm], reduction="none"))

    return loss_fn


@register
class L2BMethod(Method):
    name = "l2b"
    needs_clean = True
    meta = True
    meta_like = True
    loss_is_global_sum = True
    options = dict(META_OPTIONS)
    option_types = {"threshold": float, "constraint": str}
    choices = META_CHOICES

    def meta_options(self) -> dict:
        """The options of ``l2b.meta_weights`` (the virtual step is passed separately)."""
        skip = ("mixup_alpha", "mixup_pseudo", "meta_sampling", "virtual_step")
        return {k: v for k, v in self.opts.items() if k not in skip}

    def warmup_loss(self, batch: Batch) -> torch.Tensor:
        """Warm-up is plain mean cross-entropy; with mixup, on mixed inputs against mixed labels
        (the authors' warm-up applies their --mixup too)."""
        alpha = float(self.opts["mixup_alpha"])
        if alpha <= 0:
            return super().warmup_loss(batch)
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(batch.y), device=batch.x.device)
        logits = self.model(lam * batch.x + (1.0 - lam) * batch.x[perm])
        return mixup_loss_fn(lam, perm)(logits, batch.y).mean()

    def loss(self, batch: Batch) -> StepOutput:
        x, loss_fn = batch.x, None
        alpha = float(self.opts["mixup_alpha"])
        if alpha > 0:  # mixed inputs; f and g both mix their two targets with the same lam
            # (under torchrun every rank draws the same lam and mixes within its shard)
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(len(batch.y), device=x.device)
            x = lam * x + (1.0 - lam) * x[perm]
            loss_fn = mixup_loss_fn(lam, perm)
            if self.opts["mixup_pseudo"] == "plain":  # authors: g = CE(z, argmax z), unmixed
                loss_fn = (loss_fn, None)
        mw = meta_weights(self.model, x, batch.y, batch.x_val, batch.y_val,
                          **virtual_step_source(self.optimizer, self.opts["virtual_step"]),
                          **self.meta_options(), loss_fn=loss_fn, distributed=self.distributed)
        return StepOutput(
            bootstrap_loss(mw, batch.y, loss_fn), alpha=mw.alpha, beta=mw.beta,
            pseudo_labels=mw.pseudo_labels,
        )


@register
class L2RWMethod(L2BMethod):
    name = "l2rw"
    options = {k: v for k, v in META_OPTIONS.items() if k != "constraint"}

    def meta_options(self) -> dict:
        return {**super().meta_options(), "constraint": "beta=0"}
