"""The one small interface every training method implements, and the method registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .options import NoOptions, OptionSpec, as_dict, build, specs


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
    epoch: float = 0.0  # training progress in epochs (e.g. 2.5: half-way through the third)
    trusted: torch.Tensor | None = None  # methods with trains_on_clean: which samples are clean


@dataclass
class StepOutput:
    """What a method's ``loss`` returns: the loss to backpropagate, and per-sample weights."""

    loss: torch.Tensor
    alpha: torch.Tensor | None = None  # weight on the observed label, shape (n,)
    beta: torch.Tensor | None = None  # weight on the pseudo-label, shape (n,)
    pseudo_labels: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SetupContext:
    """What a method may use once, before the main training, to fit auxiliary models.

    ``train_batches(epoch)`` / ``clean_batches(epoch)`` yield ``(x, y, index, n_global)`` of the
    noisy training set / the clean set (augmented, in the run's seeded order); ``new_model()``
    builds a fresh model of the run's architecture on its device; ``new_optimizer(model)`` the
    run's SGD for it; ``lr_at(epoch, step, steps_per_epoch)`` the run's schedule.
    """

    new_model: Callable[[], nn.Module]
    new_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    train_batches: Callable[[int], Any]
    clean_batches: Callable[[int], Any]
    lr_at: Callable[[int, int, int], float]
    epochs: int
    num_classes: int
    train_steps: int  # batches per epoch of train_batches
    clean_steps: int  # batches per epoch of clean_batches
    log: Callable[[str], None] = print
    clean_eval_batches: Callable[[], Any] | None = None  # the clean set without augmentation


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Callable[[int], Any], epochs: int,
        steps_per_epoch: int, lr_at: Callable[[int, int, int], float],
        log: Callable[[str], None] = print, what: str = "model") -> None:
    """Plain cross-entropy training of an auxiliary model with the run's schedule."""
    import torch.nn.functional as F

    model.train()
    for epoch in range(epochs):
        total = torch.zeros(())
        for step, (x, y, _, _) in enumerate(batches(epoch)):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch, step, steps_per_epoch)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total + loss.detach().cpu()
        log(f"{what}: epoch {epoch + 1}/{epochs} mean loss {total.item() / max(steps_per_epoch, 1):.4f}")


class Method:
    """A training method: builds the loss of one step; the trainer does backward and the step.

    Subclasses set ``needs_clean`` when they read the clean batch, ``meta`` when they take the
    meta-weight options (normalisation, constraint, ...), and implement ``loss``. ``Options`` is
    the dataclass that declares the method's options (``l2b.methods.options``); an instance's
    ``options`` holds the values it runs with.
    """

    name: str = ""
    needs_clean: bool = False  # requires a clean set (for setup or for every step)
    clean_per_step: bool = True  # with needs_clean: every Batch carries a clean batch
    # the training stream is the noisy AND the clean samples, shuffled together; Batch.trusted
    # marks the clean ones (GLC)
    trains_on_clean: bool = False
    batch_size: int | None = None  # the run's nominal batch size, set by the trainer
    meta: bool = False
    meta_like: bool = False  # a meta-gradient method (l2b, l2rw, mwnet, mlc): clipped by default
    Options: type = NoOptions
    # True when ``loss`` is a sum over the GLOBAL batch (weights normalised across ranks), False
    # for a mean over this rank's samples; the trainer reduces gradients accordingly.
    loss_is_global_sum: bool = False
    distributed: bool = False  # set by the trainer when several ranks train together

    @classmethod
    def uses_forward_ad(cls, options: dict) -> bool:
        """Whether a step runs forward-mode AD through the model (meta-gradients by jvp): then every
        module must support it (SyncBatchNorm does not), checked before any data are read."""
        return False

    @classmethod
    def forward_ad_remedy(cls, options: dict) -> str:
        """What to do when a module lacks forward-mode AD (an option that avoids it, if any)."""
        return "drop --sync-bn"

    @classmethod
    def sees_clean_labels(cls, options: dict) -> bool:
        """Whether the final model has learned from the clean labels (trained on them, or from a
        teacher that was): then its clean accuracy is biased, for model selection and as the
        held-out reference of ``l2b label-issues``."""
        return cls.trains_on_clean

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, num_classes: int | None = None,
                 **options: Any) -> None:
        self.model, self.optimizer = model, optimizer
        self.options = self.build_options(options)
        if num_classes is None:  # the classifier head's outputs, when the model has a known head
            from ..models import head

            try:
                num_classes = head(model).out_features
            except TypeError:
                pass
        self.num_classes = None if num_classes is None else int(num_classes)

    @classmethod
    def build_options(cls, given: dict[str, Any]):
        """The method's options from ``given`` (YAML, ``--method-arg``, flags, keyword arguments),
        each converted to its declared type and checked; a ValueError names the option and the fix."""
        return build(cls.name, cls.Options, given)

    @classmethod
    def option_specs(cls) -> dict[str, OptionSpec]:
        """The declared options: type, default, one-line help, allowed values."""
        return specs(cls.Options)

    @property
    def opts(self) -> dict[str, Any]:
        """The option values by name."""
        return as_dict(self.options)

    # Methods that fit something before the main training (a teacher, a corruption matrix)
    # override ``setup`` and keep what they fitted in ``state_dict`` so that --resume skips it.
    has_setup: bool = False

    def setup(self, ctx: SetupContext) -> None:
        pass

    def sync(self):
        """The all-reduce helpers when the trainer runs this method on several ranks, else None."""
        if not self.distributed:
            return None
        from ..distributed import current_sync

        return current_sync()

    def all_reduce_grads(self, params, op: str) -> None:
        """Under torchrun, all-reduce these parameters' gradients (``"sum"`` or ``"mean"``,
        ``l2b.distributed.all_reduce_grads``); nothing in one process."""
        if self.distributed:
            from ..distributed import all_reduce_grads

            all_reduce_grads(params, op=op)

    # What a checkpoint keeps of the method: these attributes, modules and optimizers through
    # their state_dict, tensors as they are; attributes still None are left out.
    checkpointed: tuple[str, ...] = ()

    def state_dict(self) -> dict | None:
        state = {}
        for name in self.checkpointed:
            value = getattr(self, name)
            if value is not None:
                state[name] = value.state_dict() if hasattr(value, "state_dict") else value
        return state or None

    def load_state_dict(self, state: dict | None) -> None:
        for name, value in (state or {}).items():
            current = getattr(self, name, None)
            if hasattr(current, "load_state_dict"):
                current.load_state_dict(value)
            else:
                setattr(self, name, value)

    def warmup_loss(self, batch: Batch) -> torch.Tensor:
        """The loss of a warm-up step (``warmup_epochs``): mean cross-entropy on the noisy labels."""
        import torch.nn.functional as F

        return F.cross_entropy(self.model(batch.x), batch.y)

    def loss(self, batch: Batch) -> StepOutput:
        raise NotImplementedError


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def declared_options() -> dict[str, dict[str, OptionSpec]]:
    """Every option name any registered method declares -> {method: its declaration}."""
    out: dict[str, dict[str, OptionSpec]] = {}
    for name in sorted(METHODS):
        for opt, spec in METHODS[name].option_specs().items():
            out.setdefault(opt, {})[name] = spec
    return out


def create_method(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, num_classes: int | None = None,
                  **options) -> Method:
    """The registered method ``name`` for this model and optimizer; ``num_classes`` defaults to
    the outputs of the model's classifier head."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](model, optimizer, num_classes=num_classes, **options)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy against soft targets: -sum_k t_k log softmax(z)_k."""
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)


def meta_optimizer(params, kind: str, lr: float, weight_decay: float, momentum: float = 0.0,
                   nesterov: bool = False, amsgrad: bool = False) -> torch.optim.Optimizer:
    """The optimizer of a meta network (MW-Net's weight net, MLC's label-correction net):
    ``adam`` (with ``amsgrad``) or ``sgd`` (with ``momentum`` and ``nesterov``)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=float(lr), weight_decay=float(weight_decay), amsgrad=bool(amsgrad))
    if kind == "sgd":
        return torch.optim.SGD(params, lr=float(lr), weight_decay=float(weight_decay), momentum=float(momentum),
                               nesterov=bool(nesterov))
    raise ValueError(f"meta_optimizer must be 'adam' or 'sgd', got {kind!r}")

