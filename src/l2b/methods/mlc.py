"""Meta Label Correction (Zheng et al., "Meta Label Correction for Noisy Label Learning",
AAAI 2021), with an exact first-order meta-gradient.

A label-correction network (LCN) maps each sample to a corrected soft label y_c; the classifier
trains on cross-entropy to y_c, and the LCN is trained bi-level: it minimises the clean loss
G(theta_hat) after a virtual SGD step of the classifier on the corrected labels (their Eq. 2-4,
one-step look-ahead). Our LCN is model-agnostic: it reads the classifier's (detached) predicted
distribution and the one-hot noisy label, y_c = softmax(MLP([p, onehot(y)]) + s * onehot(y)) with
a learnable scale s (their LCN reads the classifier's hidden features and a label embedding).

dG/dy_c[i, k] = (lr / n) * <grad G(theta_hat), grad log p_ik(theta)> = (lr / n) * (zdot_ik -
p_i . zdot_i), so the whole meta-gradient comes from one forward-mode JVP of the training logits
along grad G(theta_hat), as in L2B (SPEC §2); no second-order autodiff.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engines import lookahead_tangents, rng_snapshot
from .base import Batch, Method, StepOutput, meta_optimizer, register


class LabelCorrectionNet(nn.Module):
    def __init__(self, num_classes: int, hidden: int = 128, label_scale: float = 2.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.label_scale = nn.Parameter(torch.tensor(float(label_scale)))
        self.num_classes = num_classes

    def forward(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(y, self.num_classes).to(probs)
        return torch.softmax(self.net(torch.cat([probs, onehot], dim=1)) + self.label_scale * onehot, dim=1)


def soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


@register
class MLC(Method):
    name = "mlc"
    needs_clean = True
    loss_is_global_sum = True  # sum over this rank's samples of soft CE / global batch size
    options = {"hidden": 128, "label_scale": 2.0, "meta_lr": 1e-3, "meta_weight_decay": 0.0,
               "meta_optimizer": "adam"}

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.lcn: LabelCorrectionNet | None = None  # built on the first batch (needs K)
        self.meta_opt = None
        self._pending_state = None

    def _build(self, num_classes: int, like: torch.Tensor) -> None:
        self.lcn = LabelCorrectionNet(num_classes, int(self.opts["hidden"]), float(self.opts["label_scale"]))
        self.lcn.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)
        self.meta_opt = meta_optimizer(self.lcn.parameters(), self.opts["meta_optimizer"],
                                       self.opts["meta_lr"], self.opts["meta_weight_decay"])
        if self._pending_state is not None:
            self.lcn.load_state_dict(self._pending_state["lcn"])
            self.meta_opt.load_state_dict(self._pending_state["meta_opt"])
            self._pending_state = None

    def corrected(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.lcn is None:
            self._build(logits.shape[1], logits.detach())
        dtype = next(self.lcn.parameters()).dtype
        return self.lcn(torch.softmax(logits.detach().to(dtype), dim=1), y).to(logits.dtype)

    def _global_n(self, y: torch.Tensor, sync) -> float:
        return float(len(y)) if sync is None else float(sync.allsum(torch.tensor(float(len(y)), device=y.device)))

    def meta_gradient(self, batch: Batch, logits: torch.Tensor, rng_state, n: float | None = None) -> torch.Tensor:
        """Fill the LCN's .grad with dG/dpsi; return G(theta_hat). ``n``: the global batch size."""
        lr = float(self.optimizer.param_groups[0]["lr"])
        sync = self.sync()
        n = self._global_n(batch.y, sync) if n is None else n
        y_c = self.corrected(logits, batch.y)
        val_loss, zdot = lookahead_tangents(self.model, batch.x, batch.x_val, batch.y_val,
                                            soft_ce(logits, y_c.detach()).sum() / n, lr, rng_state, sync)
        p = torch.softmax(logits.detach(), dim=1)
        d_yc = (lr / n) * (zdot - (p * zdot).sum(dim=1, keepdim=True))
        self.meta_opt.zero_grad(set_to_none=True)
        y_c.backward(d_yc.to(y_c.dtype))
        self.all_reduce_grads(self.lcn.parameters(), op="sum")
        return val_loss

    def loss(self, batch: Batch) -> StepOutput:
        rng_state = rng_snapshot(batch.x.device)
        logits = self.model(batch.x)  # the real forward: BN statistics move once
        n = self._global_n(batch.y, self.sync())  # one count per step, shared by both phases
        val_loss = self.meta_gradient(batch, logits, rng_state, n)
        self.meta_opt.step()
        with torch.no_grad():
            y_c = self.corrected(logits, batch.y)
        conf = y_c.gather(1, batch.y[:, None]).squeeze(1)  # how much of the label survives
        return StepOutput(soft_ce(logits, y_c).sum() / n, alpha=conf / n, beta=(1 - conf) / n,
                          pseudo_labels=y_c.argmax(dim=1), extra={"val_loss": val_loss})

    def state_dict(self) -> dict | None:
        if self.lcn is None:
            return None
        return {"lcn": self.lcn.state_dict(), "meta_opt": self.meta_opt.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        self._pending_state = state
