"""``L2B``: Algorithm 1 as a two-line drop-in for your own training loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import all_reduce_grads, current_sync
from .engines import LossFn, check_engine
from .meta import MetaWeights, bootstrap_loss, check_model, meta_weights
from .normalize import check_options
from .virtual_step import REPLAYED


VIRTUAL_STEPS = ("optimizer", "sgd")  # replay the run's optimizer step (the authors') | plain SGD (paper Eq. 5)


def virtual_step_source(optimizer: torch.optim.Optimizer, virtual_step: str) -> dict:
    """``meta_weights``' ``optimizer=`` (replay its SGD step: the authors' code) or ``lr=`` (paper
    Eq. 5: plain SGD at the optimizer's one current learning rate)."""
    if virtual_step == "optimizer":
        return {"optimizer": optimizer}
    if virtual_step != "sgd":
        raise ValueError(f"virtual_step must be 'optimizer' or 'sgd', got {virtual_step!r}")
    lrs = {float(g["lr"]) for g in optimizer.param_groups}
    if len(lrs) != 1:
        raise ValueError(
            "virtual_step='sgd' needs one learning rate, but the optimizer's groups have "
            f"{sorted(lrs)}; use virtual_step='optimizer'"
        )
    return {"lr": lrs.pop()}


@dataclass
class StepResult:
    """The outcome of one :meth:`L2B.step`."""

    loss: torch.Tensor  # the weighted loss of the real step (detached)
    weights: MetaWeights

    @property
    def all_zero(self) -> bool:
        return self.weights.all_zero


class L2B:
    """Meta weights, weighted loss, backward and optimizer step in one call.

    Example:
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        >>> l2b_step = l2b.L2B(model, opt)
        >>> for (x, y), (x_val, y_val) in zip(train_loader, itertools.cycle(val_loader)):
        ...     out = l2b_step.step(x, y, x_val, y_val)

    Args:
        model, optimizer: the model and the torch.optim.SGD (the paper's), Adam or AdamW that
            trains it (another optimizer with ``virtual_step="sgd"``).
        virtual_step: ``"optimizer"`` (default, the authors' code: the virtual step is the
            optimizer's own step, momentum and weight decay included; Adam's and AdamW's
            linearised at the zero weights, where the meta-gradient is taken: docs/methods.md) or
            ``"sgd"`` (paper Eq. 5: plain SGD with the optimizer's current learning rate).
        clip_grad_norm: clip the real step's gradient norm to this value (the paper: 0.25 on
            CIFAR-10, 0.8 on CIFAR-100 / ISIC); None for no clipping.
        normalize, temperature, threshold, constraint, engine, loss_fn, distributed: as in
            :func:`l2b.meta_weights`. With ``distributed`` (under torchrun, each rank passing its
            shards of the global batches) the step's gradients are those of the global batch's
            loss on every rank, as one process would compute them: summed over the ranks, or
            through ``model``'s own DistributedDataParallel wrapper where it has one.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        virtual_step: str = "optimizer",
        clip_grad_norm: float | None = None,
        normalize: str = "sum",
        temperature: float = 1.0,
        threshold: float | None = None,
        constraint: str | None = None,
        engine: str = "jvp-lean",
        loss_fn: LossFn | None = None,
        distributed: bool = False,
    ) -> None:
        if virtual_step not in VIRTUAL_STEPS:
            raise ValueError(f"virtual_step must be one of {', '.join(map(repr, VIRTUAL_STEPS))}, got {virtual_step!r}")
        if clip_grad_norm is not None and not (math.isfinite(clip_grad_norm) and clip_grad_norm > 0):
            # torch would scale the gradient by a negative factor and step uphill
            raise ValueError(f"clip_grad_norm must be a finite number > 0, or None for no clipping; got {clip_grad_norm}")
        if virtual_step == "optimizer" and not isinstance(optimizer, REPLAYED):
            raise TypeError(f"l2b.L2B replays the optimizer's step as the virtual step (virtual_step='optimizer'), "
                            f"which it can for torch.optim.SGD, Adam and AdamW; got {type(optimizer).__name__}: pass "
                            f"virtual_step='sgd' (the paper's Eq. 5, a plain SGD look-ahead at the optimizer's "
                            f"learning rate; the real step stays {type(optimizer).__name__}'s)")
        check_engine(engine)  # said at construction, not at the first step
        check_model(model)
        check_options(normalize, constraint, temperature)
        self.model, self.optimizer = model, optimizer
        self.virtual_step, self.clip_grad_norm = virtual_step, clip_grad_norm
        self.loss_fn = loss_fn
        self.options = dict(
            normalize=normalize, temperature=temperature, threshold=threshold,
            constraint=constraint, engine=engine, loss_fn=loss_fn, distributed=distributed,
        )

    def weights(self, x, y, x_val, y_val) -> MetaWeights:
        """Only the meta step: the weights for this batch, without updating the model."""
        return meta_weights(self.model, x, y, x_val, y_val, **virtual_step_source(self.optimizer, self.virtual_step),
                            **self.options)

    def step(self, x, y, x_val, y_val) -> StepResult:
        """One iteration of Algorithm 1: meta weights, then the real step on Eq. 3's loss."""
        mw = self.weights(x, y, x_val, y_val)
        loss = bootstrap_loss(mw, y, self.loss_fn)
        self.optimizer.zero_grad(set_to_none=True)
        sync = current_sync() if self.options["distributed"] else None
        wrapped = isinstance(self.model, nn.parallel.DistributedDataParallel)
        if sync is not None and wrapped:  # DDP averages the gradients over ranks; this loss sums over the global batch
            (loss * torch.distributed.get_world_size()).backward()
        else:
            loss.backward()
            if sync is not None:  # the gradient of the global batch's loss, on every rank
                all_reduce_grads(self.model.parameters(), op="sum")
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        return StepResult(loss=loss.detach(), weights=mw)
