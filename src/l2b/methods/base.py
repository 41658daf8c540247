"""The one small interface every training method implements, and the method registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class Batch:
    """One training step's data, already augmented and on the training device.

    ``x_val``/``y_val`` are a clean batch, present only for methods with ``needs_clean``.
    ``index`` are the positions of the samples in the training set (for per-sample logging).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


@dataclass
class StepOutput:
    """What a method's ``loss`` returns: the loss to backpropagate, and per-sample weights."""

    loss: torch.Tensor
    alpha: torch.Tensor | None = None  # weight on the observed label, shape (n,)
    beta: torch.Tensor | None = None  # weight on the pseudo-label, shape (n,)
    pseudo_labels: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """A training method: builds the loss of one step; the trainer does backward and the step.

    Subclasses set ``needs_clean`` when they read the clean batch, ``meta`` when they take the
    meta-weight options (normalisation, constraint, ...), and implement ``loss``. ``options``
    documents the method's own keyword options with their defaults.
    """

    name: str = ""
    needs_clean: bool = False
    meta: bool = False
    options: dict[str, Any] = {}
    # True when ``loss`` is a sum over the GLOBAL batch (weights normalised across ranks), False
    # for a mean over this rank's samples; the trainer reduces gradients accordingly.
    loss_is_global_sum: bool = False
    distributed: bool = False  # set by the trainer when several ranks train together

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"method {self.name!r} has no option(s) {sorted(unknown)}; its options: {valid}")
        self.model, self.optimizer = model, optimizer
        self.opts = {**self.options, **options}

    def loss(self, batch: Batch) -> StepOutput:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def create_method(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, **options) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](model, optimizer, **options)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
