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

    ``x_val``/``y_val`` are a clean batch, present only for methods whose ``needs`` ask for one per step.
    ``index`` are the positions of the samples in the training set (for per-sample logging).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    epoch: float = 0.0  # training progress in epochs (e.g. 2.5: half-way through the third)
    trusted: torch.Tensor | None = None  # with needs().clean_in_stream: which samples are clean


@dataclass
class StepOutput:
    """What a method's ``loss`` returns: the loss to backpropagate, and per-sample weights."""

    loss: torch.Tensor
    alpha: torch.Tensor | None = None  # weight on the observed label, shape (n,)
    beta: torch.Tensor | None = None  # weight on the pseudo-label, shape (n,)
    pseudo_labels: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # "mean": a mean over this rank's samples; "global_sum": a sum over the GLOBAL batch (weights
    # normalised across ranks). Under torchrun the trainer reduces the gradients accordingly.
    reduction: str = "mean"


# the gradient-norm clip of the meta-gradient methods when none is given (the paper's CIFAR-100 /
# ISIC value; without it they can diverge at the default lr: README "Training from the command line")
META_CLIP = 0.8


@dataclass(frozen=True)
class DataNeeds:
    """The data a method's steps read, declared by the method (``Method.needs``); the trainer
    builds exactly this and reads nothing else about the method."""

    clean: bool = False  # the run needs a clean set (for its setup or its steps)
    clean_per_step: bool = False  # every Batch carries a clean batch (x_val, y_val)
    clean_sampling: str = "cycle"  # cycle: through the clean set, reshuffled each pass | random
    # the training stream is the noisy AND the clean samples, shuffled together; Batch.trusted
    # marks the clean ones (GLC)
    clean_in_stream: bool = False


@dataclass
class EpochContext:
    """What ``Method.on_epoch_start`` may read and change as an epoch begins.

    ``train`` / ``clean`` are the run's splits (``l2b.data.batches``: ``.y`` holds the labels the
    run trains on, ``len()`` their count); ``take(indices, labels)`` builds a split of training
    samples with the given labels (default: as given), and ``set_clean(split, since_epoch=None)``
    makes it the clean set of the steps that follow (fresh batches, shuffled by the run's seed and
    the epoch the set was made at: give ``since_epoch`` when setting a kept set again after a
    resume), e.g. a meta set selected from the noisy data; ``exclude(indices)`` takes training
    samples out of the noisy stream."""

    epoch: int
    warm: bool  # a warm-up epoch of plain cross-entropy
    model: nn.Module
    train: Any
    clean: Any
    take: Callable[..., Any]
    set_clean: Callable[..., None]
    log: Callable[[str], None] = print
    exclude: Callable[[Any], None] | None = None  # exclude(indices): these training samples take no step


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
    # a method that fitted with the run's own optimizer settings may hand their state over to the
    # trainer's optimizer (GLC: one optimizer for both phases); the trainer loads it
    load_optimizer_state: Callable[[dict], None] | None = None


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
            if not torch.isfinite(total):  # a diverged fit would hand NaN to what it estimates
                raise ValueError(f"{what}: the loss became NaN or inf at epoch {epoch + 1}, step {step + 1}; it trains "
                                 f"with the run's --lr and schedule, unclipped: lower --lr or raise --batch-size")
        log(f"{what}: epoch {epoch + 1}/{epochs} mean loss {total.item() / max(steps_per_epoch, 1):.4f}")


class Method:
    """A training method: hooks the trainer calls, and nothing else it reads.

    - ``needs(options)``: the data its steps read (``DataNeeds``);
    - ``setup(ctx)``: a fit before training (a teacher, a corruption matrix), skipped on resume
      (keep what it fitted in ``state_dict``);
    - ``on_epoch_start(epoch, ctx)``: as each epoch begins (``EpochContext``: e.g. re-select data);
    - ``loss(batch)``: the step's loss and per-sample weights (``StepOutput``, with its reduction);
      ``warmup_loss(batch)`` during warm-up epochs;
    - ``state_dict`` / ``load_state_dict``: what a checkpoint keeps (default: ``checkpointed``);
    - ``default_clip(options)``, ``uses_forward_ad(options)``, ``sees_clean_labels(options)``,
      ``fits_to_clean(options)``, ``replays_adam``: what the run's checks and defaults need to know;
    - ``owned_optimizers()``: optimizers the method steps itself (meta nets, co-teaching's peer);
      the trainer steps the model's.

    ``Options`` is the dataclass that declares the method's options (``l2b.methods.options``); an
    instance's ``options`` holds the values it runs with. The run's batch size and whether it is
    distributed are given at construction.
    """

    name: str = ""
    Options: type = NoOptions
    # its steps hold for an Adam / AdamW run as for an SGD one (a look-ahead at non-zero weights,
    # MW-Net's and MLC's, is an SGD step and does not)
    replays_adam: bool = True

    @classmethod
    def needs(cls, options: dict) -> DataNeeds:
        """The data this method reads with these options (a dict of option values)."""
        return DataNeeds()

    @classmethod
    def default_clip(cls, options: dict) -> float | None:
        """The gradient-norm clip of the run when --clip-grad-norm is not given."""
        return None

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
        return cls.needs(options).clean_in_stream

    @classmethod
    def fits_to_clean(cls, options: dict) -> bool:
        """Whether a meta step pulls the model towards its clean batches without training on them,
        so that it ends surer of the clean samples than of its correctly labelled training samples
        (each training sample's weight tuned on them: L2B, L2RW). ``l2b label-issues`` then reads
        the clean set as a steered reference, not a held-out one."""
        return cls.needs(options).clean_per_step

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, num_classes: int | None = None, *,
                 batch_size: int | None = None, distributed: bool = False, **options: Any) -> None:
        self.model, self.optimizer = model, optimizer
        self.batch_size = batch_size  # the run's nominal (global) batch size
        self.distributed = distributed  # several ranks train together (torchrun)
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

    def setup(self, ctx: SetupContext) -> None:
        """A fit before the main training (a teacher, a corruption matrix); keep what it fitted in
        ``state_dict`` so that --resume skips it. Default: nothing."""

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        """Called as each epoch begins (warm-up epochs included), before its first step. Default:
        nothing."""

    def owned_optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers this method steps inside ``loss`` (never the model's: the trainer steps
        that one after ``loss``)."""
        return []

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


class LookaheadMethod(Method):
    """A method whose meta net (``self.meta_opt``'s parameters) learns from a look-ahead step on
    every clean batch (MW-Net, MLC): its hooks."""

    replays_adam = False

    @classmethod
    def needs(cls, options: dict) -> DataNeeds:
        return DataNeeds(clean=True, clean_per_step=True)

    @classmethod
    def default_clip(cls, options: dict) -> float | None:
        return META_CLIP

    @classmethod
    def uses_forward_ad(cls, options: dict) -> bool:
        return True  # the look-ahead's tangents (engines.lookahead_tangents)

    def owned_optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.meta_opt]  # stepped in loss(), before the trainer's step of the model


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


def options_of(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The option values method ``name`` runs with, from the ones given (defaults filled in)."""
    return vars(METHODS[name].build_options(given))


def needs_of(name: str, given: dict[str, Any]) -> DataNeeds:
    """The data method ``name`` reads with the given options."""
    return METHODS[name].needs(options_of(name, given))


def learns_from_clean(name: str, options: dict[str, Any], train_on_clean: bool = False) -> bool:
    """Whether a run of method ``name`` ends with a model that learned from its clean labels: the
    run trained on them (``train_on_clean``) or the method does (``sees_clean_labels``). The clean
    set is then no held-out yardstick: not for memorisation, nor as label-issues' reference."""
    return bool(train_on_clean) or METHODS[name].sees_clean_labels(options)


def create_method(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, num_classes: int | None = None,
                  *, batch_size: int | None = None, distributed: bool = False, **options) -> Method:
    """The registered method ``name`` for this model and optimizer; ``num_classes`` defaults to
    the outputs of the model's classifier head."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name](model, optimizer, num_classes=num_classes, batch_size=batch_size, distributed=distributed,
                         **options)


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

