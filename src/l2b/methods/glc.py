"""Gold Loss Correction (Hendrycks et al., "Using Trusted Data to Train Deep Networks on Labels
Corrupted by Severe Noise", NeurIPS 2018), as mmazeika/glc ``CIFAR/train_ours.py``.

Phase 1 (setup): the network, from the run's initial weights, trains with cross-entropy on the
noisy ("silver") samples only, with the run's optimizer and schedule
(``estimate_epochs``, default the run's epochs). C is estimated on the trusted ("gold") set
with the test transform (no augmentation), in eval mode: C[i, j] = mean over gold x of true class
i of p(label j | x).

Phase 2 (the run): the network restarts from the SAME initial weights, and the optimizer keeps
its state (momentum buffers) from phase 1, as the reference reuses one optimizer object. The
training stream is one shuffled pass over gold and silver together, so gold samples make up
their natural share of each batch. Each batch's silver and gold parts go through the network
separately, and the loss is

    (sum_gold CE(z, y) + sum_silver -log((softmax(z) @ C)[y])) / batch_size,

with the run's nominal batch size, as the reference divides by ``args.batch_size``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..models import eval_mode
from dataclasses import dataclass

from .base import Batch, DataNeeds, Method, SetupContext, StepOutput, fit, register
from .options import option


@dataclass
class GLCOptions:
    estimate_epochs: int | None = option(None, "epochs of phase 1 on the noisy labels (none: the run's epochs)",
                                         check=lambda v: v >= 1 or "must be at least 1")


@torch.no_grad()
def estimate_corruption(model: torch.nn.Module, batches, num_classes: int) -> torch.Tensor:
    """C[i, j]: the model's mean probability of label j on trusted samples of true class i.
    A class absent from the trusted data gets the identity row."""
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    with eval_mode(model):
        for x, y, *_ in batches:
            p = torch.softmax(model(x).double(), dim=1).cpu()
            sums.index_add_(0, y.cpu(), p)
            counts += torch.bincount(y.cpu(), minlength=num_classes)
    c = sums / counts.clamp(min=1)[:, None]
    c[counts == 0] = torch.eye(num_classes, dtype=torch.float64)[counts == 0]
    return c


def forward_corrected_nll(logits: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-sample -log p(noisy y | x) with p(noisy | x) = softmax(z) @ C (rows: true class)."""
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    p_noisy = torch.softmax(z, dim=1) @ c.to(z.device, z.dtype)
    return -torch.log(p_noisy.gather(1, y[:, None]).squeeze(1))


@register
class GLC(Method):
    name = "glc"
    Options = GLCOptions
    checkpointed = ("corruption",)

    @classmethod
    def needs(cls, options: dict) -> DataNeeds:
        return DataNeeds(clean=True, clean_in_stream=True)  # one stream over the silver and gold samples

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.corruption: torch.Tensor | None = None

    def setup(self, ctx: SetupContext) -> None:
        estimator = copy.deepcopy(self.model)  # the run's initial weights (phase 2 restarts from them)
        est_opt = ctx.new_optimizer(estimator)
        epochs = self.options.estimate_epochs or ctx.epochs
        fit(estimator, est_opt, ctx.train_batches, epochs, ctx.train_steps, ctx.lr_at, ctx.log,
            what="GLC phase 1 (noisy labels)")
        clean = ctx.clean_eval_batches() if ctx.clean_eval_batches is not None else ctx.clean_batches(0)
        self.corruption = estimate_corruption(estimator, clean, ctx.num_classes)
        ctx.load_optimizer_state(est_opt.state_dict())  # one optimizer for both phases

    def loss(self, batch: Batch) -> StepOutput:
        if self.corruption is None:
            raise RuntimeError("glc: the corruption matrix is not estimated; the trainer calls setup() first")
        gold = batch.trusted if batch.trusted is not None else torch.zeros_like(batch.y, dtype=torch.bool)
        total = batch.x.new_zeros(())
        n_gold = int(gold.sum())
        if min(n_gold, len(gold) - n_gold) == 1:
            # a part of one sample: BatchNorm cannot normalise it on its own at 1x1 (the reference's
            # separate forwards fail there), so the batch goes through in one forward
            logits = self.model(batch.x)
            silver_logits, gold_logits = logits[~gold], logits[gold]
        else:  # the reference's separate forwards (BatchNorm statistics per part)
            silver_logits = self.model(batch.x[~gold]) if n_gold < len(gold) else None
            gold_logits = self.model(batch.x[gold]) if n_gold else None
        if silver_logits is not None:
            total = total + forward_corrected_nll(silver_logits, batch.y[~gold], self.corruption).sum()
        if gold_logits is not None:
            total = total + F.cross_entropy(gold_logits, batch.y[gold], reduction="sum")
        # the nominal global batch size (under torchrun too: the ranks' sums add up)
        # sums over this rank's samples / the nominal global batch size
        return StepOutput(total / (self.batch_size or len(batch.y)), reduction="global_sum")
