"""Meta-Weight-Net (Shu et al., "Meta-Weight-Net: Learning an Explicit Mapping for Sample
Weighting", NeurIPS 2019), with an exact first-order meta-gradient.

A 1-100-1 MLP V(loss; phi) with a sigmoid output maps each sample's loss to its weight. Each
step (their Algorithm 1):

1. weights w_i = V(l_i(theta); phi), and c = w / n (``normalize=False``: the current official
   ``MW-Net.py``, whose loss is sum(c_i l_i) / n) or c = w / sum(w) (``normalize=True``: the
   older ``train_WRN-28-10_Meta_PGC.py``, when the sum is non-zero);
2. virtual step theta_hat = theta - lr * sum_i c_i grad l_i(theta) (their Eq. 4, plain SGD at the
   optimizer's current learning rate);
3. meta step on phi with the gradient of the clean loss G(theta_hat) (their Eq. 5);
4. the real step on sum_i c'_i l_i with the weights c' of the UPDATED phi (their Eq. 6).

The meta-gradient of step 3 needs no second-order autodiff: G depends on phi only through the
c_i, and dG/dc_i = -lr * <grad G(theta_hat), grad l_i(theta)> exactly, so all n of them come from
one forward-mode JVP of the training logits along grad G(theta_hat) (the identity of
docs/methods.md at the non-zero weights c); backpropagating -lr * d through c = c(V(l; phi))
gives dG/dphi.

Two published versions of the reference code (xjtushujun/meta-weight-net), picked by ``variant``:

- ``current`` (default): ``MW-Net.py``. Mean loss sum(w_i l_i) / n; V-net on
  Adam(lr 1e-3, weight decay 1e-4).
- ``original``: ``train_WRN-28-10_Meta_PGC.py``. Sum-normalised weights; V-net on SGD(lr 1e-3,
  momentum 0.9, Nesterov, weight decay 5e-4).

Any single setting (normalize, meta_optimizer, meta_lr, ...) given explicitly overrides the
variant's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engines import lookahead_tangents, loss_grad_wrt_logits, rng_snapshot
from ..virtual_step import plain_sgd_step
from dataclasses import dataclass, replace

from .base import Batch, LookaheadMethod, StepOutput, meta_optimizer, register
from .options import option

_POSITIVE = dict(check=lambda v: v > 0 or "must be > 0")
_NON_NEGATIVE = dict(check=lambda v: v >= 0 or "must be >= 0")


@dataclass
class MWNetOptions:
    variant: str = option("current", "reference version: current (MW-Net.py) | original "
                                     "(train_WRN-28-10_Meta_PGC.py); sets the defaults below",
                          choices=("current", "original"))
    hidden: int = option(100, "hidden units of the weight net V (1-hidden-1 MLP)", **_POSITIVE)
    normalize: bool | None = option(None, "weights divided by their sum (true) or by n (false); none: the variant's")
    meta_optimizer: str | None = option(None, "optimizer of V; none: the variant's (adam | sgd)",
                                        choices=(None, "adam", "sgd"))
    meta_lr: float | None = option(None, "learning rate of V; none: the variant's (1e-3)", **_POSITIVE)
    meta_weight_decay: float | None = option(None, "weight decay of V; none: the variant's", **_NON_NEGATIVE)
    meta_momentum: float | None = option(None, "momentum of V's SGD; none: the variant's",
                                         check=lambda v: 0 <= v < 1 or "must be in [0, 1)")
    meta_nesterov: bool | None = option(None, "Nesterov momentum for V's SGD; none: the variant's")


class WeightNet(nn.Module):
    """V(loss; phi): Linear(1, hidden) - ReLU - Linear(hidden, 1) - sigmoid."""

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(losses[:, None])).squeeze(1)


@register
class MWNet(LookaheadMethod):
    name = "mwnet"
    Options = MWNetOptions
    VARIANTS = {
        "current": {"normalize": False, "meta_optimizer": "adam", "meta_lr": 1e-3, "meta_weight_decay": 1e-4,
                    "meta_momentum": 0.0, "meta_nesterov": False},
        "original": {"normalize": True, "meta_optimizer": "sgd", "meta_lr": 1e-3, "meta_weight_decay": 5e-4,
                     "meta_momentum": 0.9, "meta_nesterov": True},
    }
    checkpointed = ("vnet", "meta_opt")

    @classmethod
    def fits_to_clean(cls, options: dict) -> bool:
        """No: the meta step tunes one small network that maps a loss to a weight, shared by every
        sample, so it pulls the model towards its clean set little (the model's mean probability of
        the true class, clean set less correct training labels: median -0.011 over 24 digits runs,
        L2B +0.040; benchmarks/RESULTS.md, "Label issues: the calibrated cut")."""
        return False

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        variant = self.VARIANTS[self.options.variant]
        self.options = replace(self.options, **{k: v for k, v in variant.items() if getattr(self.options, k) is None})
        param = next(model.parameters())
        o = self.options
        self.vnet = WeightNet(o.hidden).to(param.device)
        self.meta_opt = meta_optimizer(self.vnet.parameters(), o.meta_optimizer, o.meta_lr, o.meta_weight_decay,
                                       o.meta_momentum, o.meta_nesterov)

    def raw_weights(self, losses: torch.Tensor) -> torch.Tensor:
        """w_i = V(l_i; phi), differentiable with respect to phi."""
        dtype = next(self.vnet.parameters()).dtype
        return self.vnet(losses.detach().to(dtype)).to(losses.dtype)

    def normaliser(self, w: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The (detached) divisor of c = w / divisor over the global batch, and whether it is
        sum(w) (``normalize``, when non-zero) rather than the batch size n."""
        sync = self.sync()
        if self.options.normalize:
            total = w.detach().sum()
            total = total if sync is None else sync.allsum(total)
            if bool(total != 0):
                return total, True
        n = torch.tensor(float(len(w)), dtype=w.dtype, device=w.device)
        return (n if sync is None else sync.allsum(n)), False

    def coefficients(self, losses: torch.Tensor) -> torch.Tensor:
        w = self.raw_weights(losses)
        return w / self.normaliser(w)[0]

    def meta_gradient(self, batch: Batch, logits: torch.Tensor, losses: torch.Tensor,
                      rng_state) -> torch.Tensor:
        """Fill ``vnet``'s .grad with dG/dphi; return G(theta_hat)."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        sync = self.sync()
        w = self.raw_weights(losses)
        divisor, is_sum = self.normaliser(w)
        c = w.detach() / divisor
        # the reference's virtual step is plain SGD at the current lr (update_params)
        val_loss, zdot = lookahead_tangents(self.model, batch.x, batch.x_val, batch.y_val, (c * losses).sum(),
                                            plain_sgd_step(self.model, lr), rng_state, sync)
        g = -(loss_grad_wrt_logits(logits, batch.y, None) * zdot).sum(dim=1)  # dG/dc_i
        # c_i = w_i / W: dG/dphi = (1/W) sum_j (g_j - S) dw_j/dphi with S = sum_i g_i c_i (the
        # cross term of the normaliser; S = 0 for the fixed divisor n)
        if is_sum:
            s = (g * c).sum()
            g = g - (s if sync is None else sync.allsum(s))
        self.meta_opt.zero_grad(set_to_none=True)
        w.backward(g.to(w.dtype) / divisor)
        self.all_reduce_grads(self.vnet.parameters(), op="sum")
        return val_loss

    def loss(self, batch: Batch) -> StepOutput:
        rng_state = rng_snapshot(batch.x.device)
        logits = self.model(batch.x)  # the real forward: BN statistics move once
        losses = F.cross_entropy(logits, batch.y, reduction="none")
        val_loss = self.meta_gradient(batch, logits, losses, rng_state)
        self.meta_opt.step()
        with torch.no_grad():
            c = self.coefficients(losses)
        return StepOutput((c * losses).sum(), alpha=c.detach(), beta=torch.zeros_like(c),
                          extra={"val_loss": val_loss},
                          reduction="global_sum")  # sum_i c_i l_i with c normalised over the global batch
