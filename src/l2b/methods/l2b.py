"""The meta-learned reweighting methods: L2B (Zhou et al.) and L2RW (Ren et al. 2018).

Both call :func:`l2b.meta_weights` once per step; L2RW is L2B's engine with the constraint
beta = 0 (Ren et al., "Learning to Reweight Examples for Robust Deep Learning", ICML 2018).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..engines import ENGINES
from ..meta import bootstrap_loss, meta_weights
from ..normalize import CONSTRAINTS, NORMALIZERS
from ..step import VIRTUAL_STEPS, virtual_step_source
from .base import META_CLIP, Batch, DataNeeds, Method, StepOutput, register
from .options import as_dict, option

@dataclass
class MetaOptions:
    """The options of the meta-learned reweighting methods (L2RW's; L2B adds ``constraint``)."""

    normalize: str = option("sum", "raw weights to weights: sum (Eq. 9) | softmax (Eq. 14) | sigmoid (Eq. 13) | "
                                   "hard | isic (the authors' ISIC branch)",
                            choices=tuple(NORMALIZERS))
    temperature: float = option(1.0, "softmax / hard temperature (the paper: 10 on ISIC)",
                                check=lambda v: v > 0 or "must be > 0")
    threshold: float | None = option(None, "hard: entries <= threshold are dropped (none: 1/2n)")
    virtual_step: str = option("optimizer", "the look-ahead step: optimizer (replays the run's SGD with "
                                            "momentum, the authors' code, or its AdamW) | sgd (plain SGD, paper "
                                            "Eq. 5)",
                               choices=VIRTUAL_STEPS)
    # jvp-lean: the faster exact engine on average over benchmarks/step_cost.py's CPU runs
    # (2.51-2.88x CE vs jvp's 2.59-2.82x) at a third of its memory (benchmarks/RESULTS.md)
    engine: str = option("jvp-lean", "meta-gradient engine: jvp-lean (exact, about CE's memory) | jvp (exact, "
                                     "one forward fewer, 3-4x the memory) | unroll (second-order reference) | "
                                     "last-layer (approximate, about CE's cost)",
                         choices=tuple(ENGINES))
    mixup_alpha: float = option(0.0, "> 0: mixup inside the method, lam ~ Beta(a, a) (the authors' --mixup)",
                                check=lambda v: v >= 0 or "must be >= 0")
    mixup_pseudo: str = option("plain", "with mixup, the pseudo-label loss g: plain (unmixed, the authors' "
                                        "main.py) | mixed (like f)", choices=("plain", "mixed"))
    meta_sampling: str = option("cycle", "clean batches: cycle through the clean set, reshuffled each pass | "
                                         "random: a fresh random batch each step (the authors')",
                                choices=("cycle", "random"))


@dataclass
class L2BOptions(MetaOptions):
    constraint: str | None = option(None, "Table 7 ablations: alpha=0 | beta=0 (L2RW) | alpha+beta=1",
                                    choices=CONSTRAINTS)


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
    Options = L2BOptions

    @classmethod
    def needs(cls, options: dict) -> DataNeeds:
        return DataNeeds(clean=True, clean_per_step=True, clean_sampling=options.get("meta_sampling", "cycle"))

    @classmethod
    def default_clip(cls, options: dict) -> float | None:
        return META_CLIP

    @classmethod
    def uses_forward_ad(cls, options: dict) -> bool:
        return options.get("engine", "jvp-lean") in ("jvp", "jvp-lean")

    @classmethod
    def forward_ad_remedy(cls, options: dict) -> str:
        return "use --engine unroll (second-order, no forward-mode AD), or drop --sync-bn"

    def meta_options(self) -> dict:
        """The options that ``l2b.meta_weights`` takes (read from its signature: a new option of the
        method that is not one of its parameters never reaches it)."""
        accepted = inspect.signature(meta_weights).parameters
        return {k: v for k, v in as_dict(self.options).items() if k in accepted and k != "virtual_step"}

    def warmup_loss(self, batch: Batch) -> torch.Tensor:
        """Warm-up is plain mean cross-entropy; with mixup, on mixed inputs against mixed labels
        (the authors' warm-up applies their --mixup too)."""
        alpha = self.options.mixup_alpha
        if alpha <= 0:
            return super().warmup_loss(batch)
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(batch.y), device=batch.x.device)
        logits = self.model(lam * batch.x + (1.0 - lam) * batch.x[perm])
        return mixup_loss_fn(lam, perm)(logits, batch.y).mean()

    def loss(self, batch: Batch) -> StepOutput:
        x, loss_fn = batch.x, None
        alpha = self.options.mixup_alpha
        if alpha > 0:  # mixed inputs; f and g both mix their two targets with the same lam
            # (under torchrun every rank draws the same lam and mixes within its shard)
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(len(batch.y), device=x.device)
            x = lam * x + (1.0 - lam) * x[perm]
            loss_fn = mixup_loss_fn(lam, perm)
            if self.options.mixup_pseudo == "plain":  # authors: g = CE(z, argmax z), unmixed
                loss_fn = (loss_fn, None)
        mw = meta_weights(self.model, x, batch.y, batch.x_val, batch.y_val,
                          **virtual_step_source(self.optimizer, self.options.virtual_step),
                          **self.meta_options(), loss_fn=loss_fn, distributed=self.distributed)
        return StepOutput(
            bootstrap_loss(mw, batch.y, loss_fn), alpha=mw.alpha, beta=mw.beta,
            pseudo_labels=mw.pseudo_labels, reduction="global_sum",
        )


@register
class L2RWMethod(L2BMethod):
    name = "l2rw"
    Options = MetaOptions

    def meta_options(self) -> dict:
        return {**super().meta_options(), "constraint": "beta=0"}
