"""``meta_weights``: the per-sample weights alpha, beta of L2B (Algorithm 1, lines 4-11)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .engines import ENGINES, LossFn, check_engine, per_sample_losses, split_loss_fn
from .models import eval_mode
from .models.cpu_guard import unguarded
from .normalize import check_options, normalize_weights
from .virtual_step import optimizer_step, plain_sgd_step


@dataclass
class MetaWeights:
    """What one meta step computed for a training batch of n samples.

    Attributes:
        raw_alpha, raw_beta: ``-dG/d eps`` at eps = 0, shape (n,), before any normalisation
            (``scale * <grad G(theta_hat), grad f_i>`` and likewise with the pseudo-label loss g_i).
        alpha, beta: the normalised weights of the real step, shape (n,), detached.
        logits: the training logits of this forward, carrying the autograd graph for the real step.
        pseudo_labels: ``argmax`` of those logits, shape (n,).
        val_loss: G at the virtual-step point theta_hat(0), detached scalar.
    """

    raw_alpha: torch.Tensor
    raw_beta: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor
    logits: torch.Tensor
    pseudo_labels: torch.Tensor
    val_loss: torch.Tensor

    @property
    def all_zero(self) -> bool:
        """True when every normalised weight is zero (possible under ``normalize="sum"``)."""
        return not bool((self.alpha.any() | self.beta.any()).item())


def _check_batch(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{name}: inputs and labels must be torch tensors")
    if y.dim() != 1:
        raise ValueError(f"{name}: labels must be a 1-D tensor of class indices, got shape {tuple(y.shape)}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name}: labels must be integer class indices, got dtype {y.dtype}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")


_LOOKED_AT: weakref.WeakSet = weakref.WeakSet()  # models whose convolutions were checked for the CPU fault


def check_model(model: nn.Module) -> None:
    """A model meta_weights can call with virtual parameters (torch.func.functional_call): not an
    nn.DataParallel (one process per device instead: torchrun, ``distributed=True``) and not a
    torch.compile'd module (its graph takes no parameters from outside)."""
    if isinstance(model, nn.DataParallel):
        raise ValueError("nn.DataParallel cannot be called with virtual parameters: pass model.module on one device, "
                         "or run one process per GPU with torchrun and distributed=True (docs/distributed.md)")
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):
        raise ValueError("a torch.compile'd model cannot be called with virtual parameters: pass the module itself "
                         "(model._orig_mod) to l2b")
    if model in _LOOKED_AT:  # meta_weights checks every step: walk a model's modules once
        return
    _LOOKED_AT.add(model)
    risky = unguarded(model)
    if risky and any(p.device.type == "cpu" for p in model.parameters()):
        import warnings

        names = ", ".join(map(repr, risky[:3])) + (" ..." if len(risky) > 3 else "")
        warnings.warn(f"the model's strided 1x1 convolution(s) {names} have 2-15 input channels: on x86 CPUs "
                      f"oneDNN's weight gradient of such a convolution can corrupt memory or come out wrong with "
                      f"channels-last inputs. Guard them: model = l2b.models.guard_strided_1x1(model) "
                      f"(docs/reliability.md)", stacklevel=3)


def step_input_error(model: nn.Module, x: torch.Tensor, y: torch.Tensor, y_val: torch.Tensor) -> Exception | None:
    """What a failed step's inputs did wrong, as an error naming it: the model's output is not one
    row of class scores per sample, or a label is outside the model's classes (naming its batch and
    position). None: neither, so the failure is another's. Only called once a step has failed: it
    takes a forward of one sample, in eval mode, to learn the class count."""
    with eval_mode(model), torch.no_grad():
        out = model(x[:1])
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = f"a tensor of shape {tuple(out.shape)} for one sample" if isinstance(out, torch.Tensor) else \
            f"a {type(out).__name__}"
        return TypeError(f"the model returned {got}; meta_weights needs its logits, one row of class scores per "
                         f"sample (n, classes): wrap the model so that forward returns only those")
    k = out.shape[-1]
    for name, labels in (("training batch (x, y)", y), ("validation batch (x_val, y_val)", y_val)):
        bad = (labels < 0) | (labels >= k)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            return ValueError(f"{name}: labels[{i}] = {int(labels[i])} is not one of the model's {k} classes "
                              f"(0..{k - 1})")
    return None


def meta_weights(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    lr: float | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    normalize: str = "sum",
    temperature: float = 1.0,
    threshold: float | None = None,
    constraint: str | None = None,
    engine: str = "jvp-lean",
    loss_fn: LossFn | None = None,
    distributed: bool = False,
) -> MetaWeights:
    """Per-sample L2B weights for a training batch, from one meta step on a clean batch.

    The virtual step is either the paper's plain SGD step with step size ``lr`` (Eq. 5) or, with
    ``optimizer=``, exactly the step that ``optimizer.step()`` would take (torch.optim.SGD with its
    momentum buffers, weight decay, dampening and Nesterov; lr per parameter group), as in the
    authors' code. Give one of the two.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to logits ``(n, K)``. Its current mode
            is respected: in train mode BatchNorm uses batch statistics in every forward and only
            the one training forward updates the running statistics; in eval mode nothing moves.
        x, y: training batch and its observed (possibly noisy) labels.
        x_val, y_val: clean validation batch; G is their mean cross-entropy. Its size m is free.
        normalize: ``"sum"`` (Eq. 9, default), ``"softmax"`` (Eq. 14), ``"sigmoid"`` (Eq. 13),
            ``"hard"`` or ``"isic"`` (the authors' ISIC L2RW branch), applied jointly to the 2n entries [alpha, beta] (see ``l2b.normalize``).
        temperature, threshold: for ``"softmax"`` / ``"hard"``.
        constraint: ``None`` (L2B), ``"beta=0"`` (L2RW), ``"alpha=0"``, ``"alpha+beta=1"``.
        engine: ``"jvp-lean"`` (default: exact first-order identity, about CE's peak memory, one
            more plain forward), ``"jvp"`` (the same weights from one forward that carries both the
            tangent and the reverse graph: 3-4x CE's memory), ``"unroll"`` (second-order
            reference) or ``"last-layer"`` (an approximation from the classifier layer alone, at
            about CE's cost: the model's output must be its final ``nn.Linear``'s, found as
            ``model.head``, ``model.fc`` or the last module; exact when only that layer trains).
        loss_fn: per-sample training loss ``loss_fn(logits, targets) -> (n,)``; cross-entropy by
            default; or a pair ``(f, g)``: f against the observed labels, g against the
            pseudo-labels (None in the pair: cross-entropy). Use the same one in ``bootstrap_loss``.
        distributed: the batches are this rank's shards of a global batch (torch.distributed
            initialised): the validation gradient and the normalisation are all-reduced so the
            weights equal one process's on the global batch (see ``l2b.distributed``); the real
            step's gradients must then be all-reduced with SUM.

    Returns:
        A :class:`MetaWeights`; ``bootstrap_loss(mw, y)`` is the real step's loss.

    Example:
        >>> mw = l2b.meta_weights(model, x, y, x_val, y_val, optimizer=opt)
        >>> loss = l2b.bootstrap_loss(mw, y)
        >>> opt.zero_grad(); loss.backward(); opt.step()
    """
    if (lr is None) == (optimizer is None):
        raise ValueError(
            "give exactly one of lr= (paper Eq. 5, plain-SGD virtual step) or optimizer= "
            "(the authors' code: replay the optimizer's own SGD step)"
        )
    check_engine(engine)
    check_model(model)
    check_options(normalize, constraint, temperature)
    _check_batch("training batch (x, y)", x, y)
    _check_batch("validation batch (x_val, y_val)", x_val, y_val)

    sync = None
    if distributed:
        from .distributed import current_sync

        sync = current_sync()
        if sync is None and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise ValueError("distributed=True needs torch.distributed to be initialised (e.g. by torchrun)")
    step = plain_sgd_step(model, lr) if optimizer is None else optimizer_step(model, optimizer)
    try:
        raw_alpha, raw_beta, logits, val_loss = ENGINES[engine](model, step, x, y, x_val, y_val, loss_fn, sync)
    except (IndexError, RuntimeError, TypeError, AttributeError) as err:  # torch names no batch: say what was wrong
        diagnosis = step_input_error(model, x, y, y_val)
        if diagnosis is None:
            raise
        raise diagnosis from err
    if not bool(torch.isfinite(raw_alpha.sum() + raw_beta.sum())):  # a NaN or inf anywhere shows in the sum
        raise_non_finite(x, x_val, logits, val_loss)
    reduce = {} if sync is None else {"allsum": sync.allsum, "allmax": sync.allmax}
    alpha, beta = normalize_weights(
        raw_alpha, raw_beta, normalize=normalize, constraint=constraint,
        temperature=temperature, threshold=threshold, **reduce,
    )
    return MetaWeights(
        raw_alpha=raw_alpha,
        raw_beta=raw_beta,
        alpha=alpha.detach(),
        beta=beta.detach(),
        logits=logits,
        pseudo_labels=logits.detach().argmax(dim=1),
        val_loss=val_loss,
    )


class NonFiniteWeights(ValueError):
    """The meta-weights of a batch are NaN or inf; ``cause`` names what held the NaN/inf first."""

    def __init__(self, cause: str, remedy: str) -> None:
        super().__init__(f"meta_weights: {cause}; {remedy}")
        self.cause = cause


def raise_non_finite(x, x_val, logits, val_loss) -> None:
    """Name what made the raw weights non-finite: the inputs, the logits, or the clean loss."""
    for what, t in (("the training inputs x", x), ("the clean inputs x_val", x_val),
                    ("the training logits", logits), ("the clean loss G", val_loss)):
        bad = ~torch.isfinite(t.detach())
        if bad.any():
            where = f" (first at sample {int(bad.reshape(len(t), -1).any(1).nonzero()[0])})" if t.dim() else ""
            raise NonFiniteWeights(f"{what} hold NaN or inf{where}",
                                   "every weight of the batch would be NaN. Check the data (or lower the "
                                   "learning rate if the model diverged)")
    raise NonFiniteWeights("the meta-gradients are NaN or inf (the parameters or the virtual step overflowed)",
                           "lower the learning rate or clip the gradient norm")


def bootstrap_loss(mw: MetaWeights, y: torch.Tensor, loss_fn: LossFn | None = None) -> torch.Tensor:
    """The real step's loss ``sum_i alpha_i f_i + beta_i g_i`` (paper Eq. 3) from ``mw.logits``.

    f_i is the loss against the observed label ``y_i`` and g_i against the pseudo-label; the
    weights already sum to one over the batch, so this is a weighted SUM, not a mean.
    """
    f_fn, g_fn = split_loss_fn(loss_fn)
    logp = F.log_softmax(mw.logits, dim=1)
    f = -logp.gather(1, y[:, None]).squeeze(1) if f_fn is None else per_sample_losses(f_fn, mw.logits, y)
    g = (-logp.gather(1, mw.pseudo_labels[:, None]).squeeze(1) if g_fn is None
         else per_sample_losses(g_fn, mw.logits, mw.pseudo_labels))
    return (mw.alpha * f).sum() + (mw.beta * g).sum()
