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

Only ``shift`` and ``scale`` enter the JVP engine. The unroll engine does not use this module's
algebra: it replays the optimizer's update rule on a differentiable gradient (``engines._replay_sgd``).
"""

from __future__ import annotations

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
class VirtualStep:
    """Which parameters the virtual step moves, with their group and momentum buffer.

    ``names`` are the ``model.named_parameters()`` names of the moved (trainable) parameters;
    parameters that do not require grad, or that the optimizer does not hold, stay fixed.
    """

    names: tuple[str, ...]
    params: tuple[torch.Tensor, ...]
    groups: tuple[SGDGroup, ...]
    buffers: tuple[torch.Tensor | None, ...]

    @torch.no_grad()
    def shift_and_scale(self) -> tuple[list[torch.Tensor], list[float]]:
        """Return ``theta_hat(0)`` (detached) and the scale of each moved parameter."""
        shifts, scales = [], []
        for p, g, buf in zip(self.params, self.groups, self.buffers):
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


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> VirtualStep:
    """The step ``optimizer.step()`` would take, read from a torch.optim.SGD and its state."""
    if not isinstance(optimizer, torch.optim.SGD):
        raise TypeError(
            f"meta_weights(optimizer=...) replays a torch.optim.SGD step; got "
            f"{type(optimizer).__name__}. Pass lr=... instead for the paper's plain-SGD "
            "virtual step (Eq. 5)."
        )
    name_of = {id(p): n for n, p in model.named_parameters()}
    names, params, groups, buffers = [], [], [], []
    for group in optimizer.param_groups:
        if group.get("maximize", False):
            raise ValueError("meta_weights does not support torch.optim.SGD(maximize=True)")
        sgd = SGDGroup(
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
            groups.append(sgd)
            buffers.append(optimizer.state.get(p, {}).get("momentum_buffer") if sgd.momentum else None)
    if not names:
        raise ValueError("the optimizer holds no parameter that requires grad")
    return VirtualStep(tuple(names), tuple(params), tuple(groups), tuple(buffers))
