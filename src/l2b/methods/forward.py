"""Forward loss correction (Patrini et al., "Making Deep Neural Networks Robust to Label Noise:
a Loss Correction Approach", CVPR 2017).

The loss on a noisy label is -log((softmax(z) @ T)[y_noisy]) (their Theorem 2), where T[i, j] =
P(noisy label j | true class i). T is either given (``matrix=FILE``, K×K, .npy or .csv) or
estimated WITHOUT trusted data from anchor points (their Sec. 3.4 / Eq. 12): a model trained on
the noisy labels (``estimate_epochs``) predicts p(·|x) on the training set; for every class i the
anchor is the sample with the highest p(i|x) (the ``quantile``-th highest, 97% in their code, to
skip outliers), and row i of T is the prediction at that anchor.
"""

from __future__ import annotations

import numpy as np
import torch

from ..noise_files import read_matrix
from ..models import eval_mode
from dataclasses import dataclass

from .base import Batch, Method, SetupContext, StepOutput, fit, register
from .glc import forward_corrected_nll
from .options import option


@dataclass
class ForwardOptions:
    matrix: str | None = option(None, "a known transition matrix (.npy/.csv/.txt, rows: true class); none: estimate it")
    estimate_epochs: int | None = option(None, "epochs of the estimator on the noisy labels (none: the run's epochs)",
                                         check=lambda v: v >= 1 or "must be at least 1")
    quantile: float = option(0.97, "anchor of each class: the sample at this quantile of its probability "
                                   "(Patrini et al.: 0.97)", check=lambda v: 0.0 <= v <= 1.0 or "must be in [0, 1]")


@torch.no_grad()
def anchor_transition(model: torch.nn.Module, batches, num_classes: int, quantile: float = 0.97) -> torch.Tensor:
    """T estimated from anchor points of each class (Patrini et al., Eq. 12)."""
    with eval_mode(model):
        probs = torch.cat([torch.softmax(model(x).double(), dim=1).cpu() for x, *_ in batches])
    t = torch.empty(num_classes, num_classes, dtype=torch.float64)
    for i in range(num_classes):
        col = probs[:, i]
        threshold = torch.quantile(col, quantile, interpolation="higher") if quantile < 1 else col.max()
        eligible = torch.nonzero(col >= threshold).flatten()
        anchor = eligible[torch.argmin(col[eligible])]  # the sample at the quantile
        t[i] = probs[anchor]
    return t


@register
class Forward(Method):
    name = "forward"
    Options = ForwardOptions
    checkpointed = ("transition",)

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.transition: torch.Tensor | None = None

    def setup(self, ctx: SetupContext) -> None:
        if self.options.matrix:
            self.transition = torch.as_tensor(read_matrix(self.options.matrix, ctx.num_classes), dtype=torch.float64)
            return
        estimator = ctx.new_model()
        epochs = self.options.estimate_epochs or ctx.epochs
        fit(estimator, ctx.new_optimizer(estimator), ctx.train_batches, epochs, ctx.train_steps,
            ctx.lr_at, ctx.log, what="forward: estimator (noisy labels)")
        self.transition = anchor_transition(estimator, ctx.train_batches(0), ctx.num_classes,
                                            self.options.quantile)
        ctx.log("forward: estimated T diagonal " + np.array2string(self.transition.diagonal().numpy(), precision=2))

    def loss(self, batch: Batch) -> StepOutput:
        if self.transition is None:
            raise RuntimeError("forward: no transition matrix; the trainer calls setup() first")
        return StepOutput(forward_corrected_nll(self.model(batch.x), batch.y, self.transition).mean())
