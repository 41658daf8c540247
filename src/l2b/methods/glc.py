"""Gold Loss Correction (Hendrycks et al., "Using Trusted Data to Train Deep Networks on Labels
Corrupted by Severe Noise", NeurIPS 2018).

Setup: a model of the run's architecture is trained with cross-entropy on the noisy labels
(``estimate_epochs``, default the run's epochs); the corruption matrix is estimated on the
trusted (clean) set as C[i, j] = mean over trusted x of true class i of p(noisy label j | x)
(their Eq. 3). Training: a fresh model; on noisy samples the forward-corrected loss
-log((softmax(z) @ C)[y_noisy]), on trusted samples plain cross-entropy, averaged over both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Method, SetupContext, StepOutput, fit, register


@torch.no_grad()
def estimate_corruption(model: torch.nn.Module, batches, num_classes: int) -> torch.Tensor:
    """C[i, j]: the model's mean probability of label j on trusted samples of true class i.
    A class absent from the trusted data gets the identity row."""
    was = model.training
    model.eval()
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for x, y, *_ in batches:
        p = torch.softmax(model(x).double(), dim=1).cpu()
        sums.index_add_(0, y.cpu(), p)
        counts += torch.bincount(y.cpu(), minlength=num_classes)
    model.train(was)
    c = sums / counts.clamp(min=1)[:, None]
    c[counts == 0] = torch.eye(num_classes, dtype=torch.float64)[counts == 0]
    return c


def forward_corrected_nll(logits: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per-sample -log p(noisy y | x) with p(noisy | x) = softmax(z) @ C (rows: true class)."""
    p_noisy = torch.softmax(logits.float(), dim=1) @ c.to(logits.device, torch.float32)
    return -torch.log(p_noisy.gather(1, y[:, None]).squeeze(1).clamp(min=1e-12))


@register
class GLC(Method):
    name = "glc"
    needs_clean = True
    has_setup = True
    options = {"estimate_epochs": None}
    checkpointed = ("corruption",)

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.corruption: torch.Tensor | None = None

    def setup(self, ctx: SetupContext) -> None:
        estimator = ctx.new_model()
        epochs = int(self.opts["estimate_epochs"] or ctx.epochs)
        fit(estimator, ctx.new_optimizer(estimator), ctx.train_batches, epochs, ctx.train_steps,
            ctx.lr_at, ctx.log, what="GLC estimator (noisy labels)")
        self.corruption = estimate_corruption(estimator, ctx.clean_batches(0), ctx.num_classes)

    def loss(self, batch: Batch) -> StepOutput:
        if self.corruption is None:
            raise RuntimeError("glc: the corruption matrix is not estimated; the trainer calls setup() first")
        logits = self.model(torch.cat([batch.x, batch.x_val]))
        n = len(batch.y)
        noisy = forward_corrected_nll(logits[:n], batch.y, self.corruption)
        trusted = F.cross_entropy(logits[n:], batch.y_val, reduction="none")
        return StepOutput(torch.cat([noisy, trusted]).mean())
