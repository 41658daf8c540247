"""The virtual step theta_hat(eps) of Algorithm 1, line 7, linearised at eps = 0.

For a step whose update is linear in the gradient (plain SGD, or torch.optim.SGD with momentum,
dampening, weight decay and Nesterov), the parameters after the virtual step are

    theta_hat(eps) = shift - sum_i eps_i * scale * grad f_i(theta)

with ``shift = theta_hat(0)`` and a per-parameter-group factor ``scale`` (the first-order identity of docs/methods.md):

* paper Eq. 5, plain SGD with step lambda: shift = theta, scale = lambda;
* torch.optim.SGD (what the authors' code does through ``higher``): with d0 = wd * theta the
  eps-free part of the gradient,
    no momentum:          shift = theta - lr * d0,                      scale = lr
    momentum, no buffer:  b0 = d0,                                       c = 1
    momentum, buffer:     b0 = mu * buf + (1 - dampening) * d0,          c = 1 - dampening
    plain momentum:       shift = theta - lr * b0,                       scale = lr * c
    Nesterov:             shift = theta - lr * (d0 + mu * b0),           scale = lr * (1 + mu * c)

* torch.optim.Adam / AdamW, whose update is not linear in the gradient, linearised at eps = 0,
  where the eps-weighted gradient g is zero (per element; t = the step count + 1, bc1 = 1 - b1^t,
  bc2 = 1 - b2^t, m, v, vmax: the optimizer's state, zero before its first step):
    decoupled decay (AdamW):  p0 = p * (1 - lr * wd),  g0 = 0
    L2 decay (Adam):          p0 = p,                  g0 = wd * p
    m0 = b1 m + (1 - b1) g0,  v0 = b2 v + (1 - b2) g0^2,  u0 = max(vmax, v0) with amsgrad else v0,
    D = sqrt(u0 / bc2) + eps
    shift = p0 - lr / bc1 * m0 / D
    scale = lr / bc1 * ((1 - b1) / D - m0 * (1 - b2) * g0 / (D^2 sqrt(bc2 * v0)))
  (the second term only where u0 = v0 > 0: the denominator's own derivative, zero when g0 = 0;
  computed with m0 and v0 written out, free of the cancellation of their g0^2 terms).
  ``scale`` is then a tensor, one factor per element: Adam's preconditioner at theta_hat(0).
  Where v0 = 0 (before the first step) the step, lr * g / (|g| + eps) near g = 0 after the bias
  corrections, has slope lr / eps at g = 0, which the same formula gives (D = eps).

Only ``shift`` and ``scale`` enter the JVP engine. The unroll engine does not use this module's
algebra: it replays the optimizer's update rule on a differentiable gradient (``replay``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SGDGroup:
    """The hyperparameters of one parameter group of a plain or torch.optim.SGD step."""

    lr: float
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass(frozen=True)
class AdamGroup:
    """The hyperparameters of one parameter group of torch.optim.Adam or AdamW."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled: bool = True  # AdamW's decay of the parameters; False: Adam's L2 term in the gradient
    amsgrad: bool = False


@dataclass(frozen=True)
class AdamState:
    """An Adam parameter's state before the virtual step (zeros before its first step)."""

    step: float
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    max_exp_avg_sq: torch.Tensor | None = None


@dataclass(frozen=True)
class VirtualStep:
    """Which parameters the virtual step moves, with their group and optimizer state.

    ``names`` are the ``model.named_parameters()`` names of the moved (trainable) parameters;
    parameters that do not require grad, or that the optimizer does not hold, stay fixed.
    ``buffers``: an SGD parameter's momentum buffer (or None), an Adam parameter's ``AdamState``.
    """

    names: tuple[str, ...]
    params: tuple[torch.Tensor, ...]
    groups: tuple[SGDGroup | AdamGroup, ...]
    buffers: tuple[torch.Tensor | AdamState | None, ...]

    @property
    def adaptive(self) -> bool:
        """Whether some parameter steps with Adam: its scale is then a tensor, not a number."""
        return any(isinstance(g, AdamGroup) for g in self.groups)

    @torch.no_grad()
    def shift_and_scale(self) -> tuple[list[torch.Tensor], list[float | torch.Tensor]]:
        """Return ``theta_hat(0)`` (detached) and the scale of each moved parameter (a number for
        SGD, a tensor of the parameter's shape for Adam)."""
        shifts, scales = [], []
        for p, g, buf in zip(self.params, self.groups, self.buffers):
            if isinstance(g, AdamGroup):
                shift, scale = _adam_shift_scale(p.detach(), g, buf)
                shifts.append(shift)
                scales.append(scale)
                continue
            # step0: the eps-free part of the update direction (None when it is zero).
            step0 = p * g.weight_decay if g.weight_decay else None
            c = 1.0
            if g.momentum:
                if buf is None:  # first step: torch.optim.SGD sets buf = d_p, no dampening
                    b0 = step0
                else:
                    c = 1.0 - g.dampening
                    b0 = _axpy(buf * g.momentum, 1.0 - g.dampening, step0)
                if g.nesterov:
                    c = 1.0 + g.momentum * c
                    step0 = _axpy(step0, g.momentum, b0)
                else:
                    step0 = b0
            shifts.append(p.detach().clone() if step0 is None else p.detach() - g.lr * step0)
            scales.append(g.lr * c)
        return shifts, scales


def _adam_shift_scale(p: torch.Tensor, g: AdamGroup, state: AdamState) -> tuple[torch.Tensor, torch.Tensor]:
    """theta_hat(0) and the per-element scale of one Adam / AdamW parameter (module docstring)."""
    b1, b2 = g.betas
    t = state.step + 1.0
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    if g.decoupled or not g.weight_decay:
        p0 = p * (1.0 - g.lr * g.weight_decay) if g.weight_decay else p.clone()
        g0 = None
    else:
        p0, g0 = p.clone(), p * g.weight_decay
    m0 = state.exp_avg * b1 + ((1.0 - b1) * g0 if g0 is not None else 0.0)
    v0 = state.exp_avg_sq * b2 + ((1.0 - b2) * g0 * g0 if g0 is not None else 0.0)
    u0 = torch.maximum(state.max_exp_avg_sq, v0) if g.amsgrad and state.max_exp_avg_sq is not None else v0
    denom = (u0.sqrt() / math.sqrt(bc2)) + g.eps
    step_size = g.lr / bc1
    shift = p0 - step_size * m0 / denom
    scale = step_size * (1.0 - b1) / denom
    if g0 is not None:  # the denominator moves with the gradient where it holds g0's square
        live = (u0 == v0) & (v0 > 0)
        r = torch.where(live, v0, torch.ones_like(v0)).sqrt() / math.sqrt(bc2)
        # (1 - b1) / D - m0 (1 - b2) g0 / (D^2 sqrt(bc2 v0)), with m0, v0 written out so that the g0^2
        # terms cancel on paper, not in floating point (before the first step it is (1 - b1) eps / D^2)
        num = ((1.0 - b1) * b2 * state.exp_avg_sq - b1 * (1.0 - b2) * state.exp_avg * g0
               + (1.0 - b1) * g.eps * bc2 * r)
        scale = torch.where(live, step_size * num / (denom * denom * bc2 * r), scale)
    return shift, scale


def _adam_state(p: torch.Tensor, state: dict, group: AdamGroup) -> AdamState:
    """An Adam parameter's state as the virtual step reads it: zeros before its first step."""
    if "exp_avg" not in state:
        zeros = torch.zeros_like(p, memory_format=torch.preserve_format).detach()
        return AdamState(0.0, zeros, zeros, zeros if group.amsgrad else None)
    return AdamState(float(_lr(state["step"])), state["exp_avg"], state["exp_avg_sq"],
                     state.get("max_exp_avg_sq") if group.amsgrad else None)


def _axpy(y: torch.Tensor | None, a: float, x: torch.Tensor | None) -> torch.Tensor | None:
    """y + a * x, where None stands for a zero tensor."""
    if x is None:
        return y
    return x * a if y is None else y + x * a


def _lr(value: object) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def plain_sgd_step(model: nn.Module, lr: float) -> VirtualStep:
    """Paper Eq. 5: theta_hat = theta - lr * grad, on every parameter that requires grad."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameter that requires grad: nothing to reweight for")
    group = SGDGroup(lr=_lr(lr))
    return VirtualStep(
        names=tuple(n for n, _ in named),
        params=tuple(p for _, p in named),
        groups=(group,) * len(named),
        buffers=(None,) * len(named),
    )


REPLAYED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)  # AdamW is an Adam in recent torch


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> VirtualStep:
    """The step ``optimizer.step()`` would take, read from a torch.optim.SGD, Adam or AdamW and
    its state."""
    if not isinstance(optimizer, REPLAYED):
        raise TypeError(
            f"meta_weights(optimizer=...) replays a torch.optim.SGD, Adam or AdamW step; got "
            f"{type(optimizer).__name__}. Pass lr=... instead for the paper's plain-SGD "
            "virtual step (Eq. 5)."
        )
    adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    name_of = {id(p): n for n, p in model.named_parameters()}
    names, params, groups, buffers = [], [], [], []
    for group in optimizer.param_groups:
        if group.get("maximize", False):
            raise ValueError(f"meta_weights does not support torch.optim.{type(optimizer).__name__}(maximize=True)")
        if adam:
            b1, b2 = (_lr(b) for b in group["betas"])
            step_group = AdamGroup(
                lr=_lr(group["lr"]), betas=(b1, b2), eps=float(group["eps"]),
                weight_decay=_lr(group.get("weight_decay", 0.0)),
                decoupled=isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay", False)),
                amsgrad=bool(group.get("amsgrad", False)),
            )
        else:
            step_group = SGDGroup(
                lr=_lr(group["lr"]),
                momentum=float(group.get("momentum", 0.0)),
                dampening=float(group.get("dampening", 0.0)),
                weight_decay=float(group.get("weight_decay", 0.0)),
                nesterov=bool(group.get("nesterov", False)),
            )
        for p in group["params"]:
            if not p.requires_grad:
                continue
            if id(p) not in name_of:
                raise ValueError(
                    "the optimizer holds a parameter that is not in the model passed to "
                    "meta_weights; build the optimizer from model.parameters()"
                )
            names.append(name_of[id(p)])
            params.append(p)
            groups.append(step_group)
            state = optimizer.state.get(p, {})
            if adam:
                buffers.append(_adam_state(p, state, step_group))
            else:
                buffers.append(state.get("momentum_buffer") if step_group.momentum else None)
    if not names:
        raise ValueError("the optimizer holds no parameter that requires grad")
    return VirtualStep(tuple(names), tuple(params), tuple(groups), tuple(buffers))


def replay(step: VirtualStep, grads: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """torch.optim.SGD's, Adam's or AdamW's update rule on differentiable gradients, written out
    step by step."""
    out = []
    for p, g, d_p, buf in zip(step.params, step.groups, grads, step.buffers):
        if isinstance(g, AdamGroup):
            out.append(_replay_adam(p, g, d_p, buf))
            continue
        if g.weight_decay:
            d_p = d_p + g.weight_decay * p
        if g.momentum:
            if buf is None:
                buf = d_p
            else:
                buf = g.momentum * buf + (1.0 - g.dampening) * d_p
            d_p = d_p + g.momentum * buf if g.nesterov else buf
        out.append(p - g.lr * d_p)
    return out


def _replay_adam(p: torch.Tensor, g: AdamGroup, grad: torch.Tensor, state: AdamState) -> torch.Tensor:
    """torch.optim.Adam / AdamW's update of one parameter (torch's single-tensor form), on a
    differentiable gradient. The square root of the second moment is taken where it is not zero;
    where it is (before the first step) it equals sqrt(1 - b2) |grad|, whose derivative at
    grad = 0 torch takes as zero, as the update's own limit has it."""
    b1, b2 = g.betas
    t = state.step + 1.0
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    if g.weight_decay:
        if g.decoupled:
            p = p * (1.0 - g.lr * g.weight_decay)
        else:
            grad = grad + g.weight_decay * p
    m = torch.lerp(state.exp_avg, grad, 1.0 - b1)
    v = state.exp_avg_sq * b2 + (1.0 - b2) * grad * grad
    if g.amsgrad and state.max_exp_avg_sq is not None:
        v = torch.maximum(state.max_exp_avg_sq, v)
    before = (state.exp_avg_sq == 0) & ((state.max_exp_avg_sq == 0) if g.amsgrad and state.max_exp_avg_sq
                                        is not None else True)
    root = torch.where(before, math.sqrt(1.0 - b2) * grad.abs(), torch.where(before, torch.ones_like(v), v).sqrt())
    denom = root / math.sqrt(bc2) + g.eps
    return p - (g.lr / bc1) * m / denom
