"""Four engines for the raw L2B weights ``w = -dG/d eps`` at eps = 0 (three exact, one
approximate), and the look-ahead core of MW-Net and MLC (``lookahead_tangents``).

``jvp`` (the first-order identity of docs/methods.md, the paper's Eq. 7-8): with v = grad G(theta_hat(0)) from one validation forward+backward,
``-dG/d eps_i = scale * <v, grad f_i(theta)>``, and all n dot products come from ONE forward-mode
JVP of the training logits z along ``scale * v``:  <v, grad f_i> = (df_i/dz_i) . zdot_i.
For cross-entropy df_i/dz_i = softmax(z_i) - onehot(y_i). The primal logits of that forward carry
the reverse graph for the real step, so the training batch is forwarded once.

``jvp-lean`` (the default of ``l2b.L2B`` and the trainer): the same numbers with about a quarter
of ``jvp``'s peak memory, for one more plain forward of the training batch (see ``raw_weights_jvp``).

``unroll`` (the second-order reference): differentiable virtual step with ``create_graph=True``,
validation loss at theta_hat(eps), then autograd back to eps. It is the test oracle of ``jvp`` and
the fallback for modules whose ops lack forward-mode AD.

``last-layer`` (approximate): the same dot products restricted to the classifier layer, in
closed form from the training forward and one clean forward without backward, at about CE's cost
(see ``raw_weights_last_layer``). Exact when the classifier is the only parameter that moves.

All four return ``(raw_alpha, raw_beta, logits, val_loss)``. All run the training forward through the
module's own buffers exactly once (so BatchNorm running statistics move exactly as in one ordinary
training forward) and the validation forward on clones of the buffers (so they never move there).
"""

from __future__ import annotations

import re
from typing import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .virtual_step import VirtualStep, replay

# loss_fn(logits, targets) -> per-sample losses of shape (n,); or a pair (f, g) of them: f for the
# observed labels, g for the pseudo-labels (the authors' mixup mixes f only)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def per_sample_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def _cloned_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in model.named_buffers()}


def _validation_loss(
    model: nn.Module, params: dict[str, torch.Tensor], x_val: torch.Tensor, y_val: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    """G = mean cross-entropy on the validation batch at the given parameters (Alg. 1, line 8)."""
    logits = functional_call(model, {**params, **_cloned_buffers(model)}, (x_val,))
    return F.cross_entropy(logits, y_val, reduction=reduction)


def split_loss_fn(loss_fn):
    """(f's loss, g's loss) from a loss_fn or a pair of them; None stands for cross-entropy."""
    return tuple(loss_fn) if isinstance(loss_fn, (tuple, list)) else (loss_fn, loss_fn)


def per_sample_losses(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``loss_fn(logits, targets)``, checked to be one loss per sample: a mean (reduction="mean")
    would give every sample the same meta-gradient and the real step no weights at all."""
    losses = loss_fn(logits, targets)
    if not isinstance(losses, torch.Tensor) or losses.shape != (logits.shape[0],):
        got = f"shape {tuple(losses.shape)}" if isinstance(losses, torch.Tensor) else f"a {type(losses).__name__}"
        raise ValueError(f"loss_fn must return one loss per sample, shape ({logits.shape[0]},); got {got}: compute "
                         f"it with reduction='none'")
    return losses


def loss_grad_wrt_logits(
    logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn | None
) -> torch.Tensor:
    """d f_i / d z_i for every sample (rows), for a per-sample loss f_i = loss_fn(z_i, t_i)."""
    if loss_fn is None:
        grad = torch.softmax(logits.detach(), dim=1)
        return grad.scatter_add_(1, targets[:, None], -torch.ones_like(grad[:, :1]))
    z = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(per_sample_losses(loss_fn, z, targets).sum(), z)
    return grad


class ForwardADUnsupported(RuntimeError):
    """An op of the model has no forward-mode AD formula: use ``engine="unroll"``."""


# PyTorch's messages for an op without a forward-mode formula, and for a custom
# autograd.Function without a jvp staticmethod.
_FWAD_MSG = re.compile(r"forward AD with (\S+)|(custom autograd\.Function)[^.]*forward mode AD")


def _tangent_forward(model, step, x, tangents, grad: bool, buffers=None):
    """The training forward at theta with forward-mode tangents; returns (logits, zdot)."""
    try:
        with torch.set_grad_enabled(grad), fwAD.dual_level():
            duals = {name: fwAD.make_dual(p, t) for name, p, t in zip(step.names, step.params, tangents)}
            out = functional_call(model, {**duals, **(buffers or {})}, (x,))
            return fwAD.unpack_dual(out)
    except (RuntimeError, NotImplementedError) as err:
        match = _FWAD_MSG.search(str(err))
        if match is None:
            raise
        op = match.group(1) or f"a {match.group(2)} without a jvp staticmethod"
        raise ForwardADUnsupported(
            f"the model uses {op}, which has no forward-mode AD support in this "
            f"PyTorch; call meta_weights(..., engine='unroll') (exact, second-order, slower)"
        ) from err


def raw_weights_jvp(
    model: nn.Module,
    step: VirtualStep,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn | None,
    sync=None,
    lean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    shifts, scales = step.shift_and_scale()
    # v = grad G at theta_hat(0): one validation forward + backward on detached copies.
    shifted = [s.requires_grad_(True) for s in shifts]
    with torch.enable_grad():
        if sync is None:
            val_loss = _validation_loss(model, dict(zip(step.names, shifted)), x_val, y_val)
            v = torch.autograd.grad(val_loss, shifted)
        else:  # G over the clean batches of all ranks (l2b.distributed)
            val_sum = _validation_loss(model, dict(zip(step.names, shifted)), x_val, y_val, "sum")
            v, val_loss = sync.mean_gradient(torch.autograd.grad(val_sum, shifted), val_sum.detach(), len(y_val))
    tangents = [g * c for g, c in zip(v, scales)]
    if not lean:
        # One training forward at theta carrying the tangent scale * v; its primal logits keep
        # the reverse graph for the real step.
        logits, zdot = _tangent_forward(model, step, x, tangents, grad=True)
    else:
        # The reverse graph of a dual forward keeps the tangent activations alive too (about 4x
        # a plain forward's memory). "jvp-lean" runs the tangent pass without a reverse graph, on
        # cloned buffers and with the same random numbers (dropout), then an ordinary forward.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            _, zdot = _tangent_forward(model, step, x, tangents, grad=False, buffers=_cloned_buffers(model))
        with torch.enable_grad():
            logits = model(x)
    if zdot is None:  # the logits do not depend on any moved parameter
        zdot = torch.zeros_like(logits)
    zdot = zdot.detach()
    pseudo = logits.detach().argmax(dim=1)
    f_fn, g_fn = split_loss_fn(loss_fn)
    raw_alpha = (loss_grad_wrt_logits(logits, y, f_fn) * zdot).sum(dim=1)
    raw_beta = (loss_grad_wrt_logits(logits, pseudo, g_fn) * zdot).sum(dim=1)
    return raw_alpha, raw_beta, logits, val_loss.detach()


def raw_weights_jvp_lean(*args, **kwargs):
    return raw_weights_jvp(*args, **kwargs, lean=True)


def lookahead_tangents(model: nn.Module, x: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                       virtual_loss: torch.Tensor, step: VirtualStep, rng_state,
                       sync=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first-order core of look-ahead meta-learning at NON-zero weights (MW-Net, MLC).

    With the virtual step theta_hat = shift - scale * grad virtual_loss(theta) (``step``: plain SGD
    from ``plain_sgd_step``, or a replay of the run's SGD from ``optimizer_step``), returns
    G(theta_hat) and zdot = J_z(theta) . (scale * grad G(theta_hat)), the tangent of the training
    logits along the scaled clean gradient: dG/dc of any loss weight or soft target c is then
    minus a per-sample dot product with zdot. ``virtual_loss`` must come from the real forward
    (its graph is kept for the real step); the tangent pass runs without a reverse graph, on
    cloned buffers, replaying ``rng_state`` ((cpu, cuda) states saved before the real forward)
    so that dropout masks match. With ``sync`` (``l2b.distributed``), ``virtual_loss`` is this
    rank's part of a sum over the global batch: its gradient is all-reduced, and G is the mean
    over all ranks' clean samples.
    """
    if step.adaptive:
        raise ValueError("MW-Net's and MLC's look-ahead is an SGD step at their non-zero weights, as in their "
                         "references; an Adam step is not linear there: train them with SGD")
    grads = torch.autograd.grad(virtual_loss, step.params, retain_graph=True, allow_unused=True)
    if sync is not None:
        grads = [None if g is None else sync.allsum(g) for g in grads]
    shifts, scales = step.shift_and_scale()
    moved = [g is not None for g in grads]
    theta_hat = [(s - c * g).detach().requires_grad_(True) if m else p.detach()
                 for p, s, c, g, m in zip(step.params, shifts, scales, grads, moved)]
    with torch.enable_grad():
        thetas = dict(zip(step.names, theta_hat))
        targets = [t for t, m in zip(theta_hat, moved) if m]
        if sync is None:
            val_loss = _validation_loss(model, thetas, x_val, y_val)
            v = torch.autograd.grad(val_loss, targets, allow_unused=True)
        else:
            val_sum = _validation_loss(model, thetas, x_val, y_val, "sum")
            v = [torch.zeros_like(t) if g is None else g
                 for t, g in zip(targets, torch.autograd.grad(val_sum, targets, allow_unused=True))]
            v, val_loss = sync.mean_gradient(v, val_sum.detach(), len(y_val))
        v = iter(v)
    tangents = []
    for t, c, m in zip(theta_hat, scales, moved):
        g = next(v) if m else None
        tangents.append(torch.zeros_like(t) if g is None else g * c)
    cuda = x.device.type == "cuda"
    with torch.random.fork_rng(devices=[x.device] if cuda else []):
        torch.set_rng_state(rng_state[0])
        if cuda:
            torch.cuda.set_rng_state(rng_state[1], x.device)
        _, zdot = _tangent_forward(model, step, x, tangents, grad=False, buffers=_cloned_buffers(model))
    return val_loss.detach(), zdot.detach()


def rng_snapshot(device: torch.device):
    """(cpu, cuda) RNG states, to replay a forward's random numbers in ``lookahead_tangents``."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def raw_weights_unroll(
    model: nn.Module,
    step: VirtualStep,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn | None,
    sync=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if sync is not None:
        raise ValueError("engine='unroll' does not run across processes; use engine='jvp' or 'jvp-lean'")
    f_fn, g_fn = (fn or per_sample_ce for fn in split_loss_fn(loss_fn))
    with torch.enable_grad():
        logits = model(x)  # the one training forward; its graph also serves the real step
        pseudo = logits.detach().argmax(dim=1)
        n = logits.shape[0]
        eps_alpha = torch.zeros(n, dtype=logits.dtype, device=logits.device, requires_grad=True)
        eps_beta = torch.zeros(n, dtype=logits.dtype, device=logits.device, requires_grad=True)
        virtual_loss = (eps_alpha * per_sample_losses(f_fn, logits, y)
                        + eps_beta * per_sample_losses(g_fn, logits, pseudo)).sum()
        grads = torch.autograd.grad(
            virtual_loss, step.params, create_graph=True, allow_unused=True
        )
        grads = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(step.params, grads))
        theta_hat = replay(step, grads)
        val_loss = _validation_loss(model, dict(zip(step.names, theta_hat)), x_val, y_val)
        d_alpha, d_beta = torch.autograd.grad(
            val_loss, (eps_alpha, eps_beta), retain_graph=True, allow_unused=True
        )
    zero = torch.zeros_like(eps_alpha)
    d_alpha = zero if d_alpha is None else d_alpha
    d_beta = zero if d_beta is None else d_beta
    return -d_alpha.detach(), -d_beta.detach(), logits, val_loss.detach()


def classifier_layer(model: nn.Module) -> tuple[nn.Linear, str]:
    """The model's final ``nn.Linear`` and its name: ``model.head`` (timm's convention; set it on
    your own model to point at the classifier), ``model.fc`` (torchvision), or the last module
    when it is an ``nn.Linear``."""
    from .models import head

    inner = getattr(model, "module", model)  # DistributedDataParallel
    prefix = "module." if inner is not model else ""
    try:
        layer = head(model)
    except TypeError:
        layer = None
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"engine='last-layer' needs the classifier to be an nn.Linear: {type(inner).__name__} has "
                         f"no `head` or `fc` nn.Linear and its last module is not one; set `model.head` to the "
                         f"final nn.Linear (whose output must be the logits), or use engine='jvp'")
    name = next(n for n, m in inner.named_modules() if m is layer)
    return layer, prefix + name


def raw_weights_last_layer(
    model: nn.Module,
    step: VirtualStep,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    loss_fn: LossFn | None,
    sync=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The raw weights restricted to the classifier layer (W, b): an APPROXIMATION of the exact
    engines on a full model, and equal to them when W and b are the only moved parameters.

    For logits z = W h + b, the tangent of z_i along the scaled clean gradient restricted to
    (W, b) is closed-form: zdot_i = c_W (V_W h_i) + c_b v_b, with V_W = sum_j d_j h'_j^T and
    v_b = sum_j d_j the clean gradient, d_j = (softmax(z'_j) - onehot(y'_j)) / m, at the
    virtual-step point theta_hat(0) (z', h': the clean batch's logits and features there). So
    raw_alpha_i = <df_i/dz_i, zdot_i> = c (1/m) sum_j <p_i - e_(y_i), p'_j - e_(y'_j)> (<h_i, h'_j> + 1)
    for a common scale c. Cost: the training forward (which the real step needs anyway) and ONE
    clean forward without backward; no backward through the body for the meta step.

    The clean forward runs at theta_hat(0) for every parameter, body included: that is where the
    exact engines take the clean gradient, so the only approximation left is dropping the body's
    parameters from the dot products <grad G, grad f_i>.
    """
    layer, name = classifier_layer(model)
    names = {n: i for i, n in enumerate(step.names)}
    if name + ".weight" not in names:
        raise ValueError(f"engine='last-layer': the classifier {name!r} is not moved by the virtual step "
                         f"(no gradient, or not held by the optimizer); use engine='jvp'")
    seen: dict[str, torch.Tensor] = {}

    def keep(_module, inputs, output):
        seen["h"], seen["z"] = inputs[0], output

    shifts, scales = step.shift_and_scale()
    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(x)  # the one training forward; its graph also serves the real step
        if seen.get("z") is not logits:
            raise ValueError(f"engine='last-layer': the model's output is not the output of its classifier "
                             f"{name!r}; point `model.head` at the final nn.Linear, or use engine='jvp'")
        h = seen["h"].detach()
        with torch.no_grad():
            z_val = functional_call(model, {**dict(zip(step.names, shifts)), **_cloned_buffers(model)}, (x_val,))
        h_val = seen["h"].detach()
    finally:
        handle.remove()
    d = torch.softmax(z_val.float() if z_val.dtype == torch.bfloat16 else z_val, dim=1)
    d = d.scatter_add(1, y_val[:, None], -torch.ones_like(d[:, :1]))  # m * dG/dz'_j
    v_w = d.T @ h_val.to(d.dtype)
    v_b = d.sum(dim=0)
    loss_sum = F.cross_entropy(z_val, y_val, reduction="sum")
    if sync is None:
        v_w, v_b, val_loss = v_w / len(y_val), v_b / len(y_val), loss_sum / len(y_val)
    else:  # the mean over all ranks' clean samples
        (v_w, v_b), val_loss = sync.mean_gradient([v_w, v_b], loss_sum, len(y_val))
    c_w = scales[names[name + ".weight"]]
    # Adam's scale is one factor per element (its preconditioner): it scales the clean gradient
    zdot = h.to(v_w.dtype) @ (c_w * v_w).T if isinstance(c_w, torch.Tensor) else c_w * (h.to(v_w.dtype) @ v_w.T)
    if name + ".bias" in names:
        zdot = zdot + scales[names[name + ".bias"]] * v_b
    zdot = zdot.to(logits.dtype)
    pseudo = logits.detach().argmax(dim=1)
    f_fn, g_fn = split_loss_fn(loss_fn)
    raw_alpha = (loss_grad_wrt_logits(logits, y, f_fn) * zdot).sum(dim=1)
    raw_beta = (loss_grad_wrt_logits(logits, pseudo, g_fn) * zdot).sum(dim=1)
    return raw_alpha, raw_beta, logits, val_loss.detach()


ENGINES = {"jvp": raw_weights_jvp, "jvp-lean": raw_weights_jvp_lean, "unroll": raw_weights_unroll,
           "last-layer": raw_weights_last_layer}


def check_engine(engine: str) -> None:
    """An engine of ``ENGINES``, or a one-line error listing them."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine={engine!r}; choose one of {', '.join(map(repr, ENGINES))}")
