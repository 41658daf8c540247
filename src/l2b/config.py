"""Every setting of a training run, its type and default, and the checks that run before any
data are read: ``TrainConfig``, ``load_yaml``.

Values from YAML, ``config.json`` and flags go through ``TrainConfig.from_dict``, which converts
each to its field's declared type (``"no"`` is False for a bool; ``"two"`` for an int is an error
naming the setting); ``validate()`` then checks ranges and contradictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .coerce import coerce_field
from .methods import METHODS
from .methods.l2b import META_OPTIONS

def _flag(name: str) -> str:
    return name.replace("_", "-")


def check_types(cfg) -> None:
    """Every field holds a value of its declared type (the Python API skips ``from_dict``)."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        converted = coerce_field(f.name, f.type, value)
        same_value = converted == value or (isinstance(value, float) and value != value)  # NaN: checked later
        int_as_float = type(value) is int and type(converted) is float
        if not same_value or (type(converted) is not type(value) and not int_as_float):
            raise ValueError(f"config: {f.name}={value!r} is not a {f.type}; give {converted!r}")


def check_device(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and CUDA only where this torch has it."""
    import torch

    if name in ("auto", "cpu"):
        return
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"--device {name!r}: choose auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available to this torch ({torch.__version__}); "
                         f"use --device cpu (or auto)")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")


def check_noise_spec(spec: str) -> None:
    """The syntax of a noise spec (kind and rate); its files are read with the data."""
    from .noise import check_spec

    check_spec(spec)


def load_yaml(path: str) -> dict[str, Any]:
    """The settings of a YAML file (keys as the flags, with - or _)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config {p}: file not found")
    try:
        import yaml
    except ImportError:
        raise ImportError("YAML configs need PyYAML: pip install 'l2b[cli]'") from None
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {p}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {p}: expected a mapping of settings, got {type(data).__name__}")
    return {k.replace("-", "_"): v for k, v in data.items()}


@dataclass
class TrainConfig:
    # --- data and noise
    data: str = "digits"  # NAME or NAME:PATH (l2b.data.DATASETS)
    noise: str = "symmetric:0.4"  # l2b.noise spec, or "none"
    noise_seed: int | None = None  # None: the run's seed
    val_per_class: int | None = 10  # clean validation images per class, taken from train
    val_total: int | None = None  # ... or a total (a multiple of the class count)
    train_subset: int | None = None  # keep only this many (random) noisy training samples
    batches_per_epoch: int | None = None  # None: one pass over the data; else this many batches
    balance_classes: bool = False  # draw each epoch's samples equally from every (noisy) class
    # (Clothing1M in the paper: 250 class-balanced batches per epoch)
    augment: str = "auto"  # auto (the dataset's default) | none | crop-flip
    image_size: int = 224  # crop size for image-file datasets
    on_bad_images: str = "error"  # image-file datasets: error | skip
    workers: int = 4  # DataLoader workers for image-file datasets
    # --- model
    model: str = "mlp"  # l2b.models.MODELS
    width: int | None = None  # model width (channels / hidden units); None: the model's default
    pretrained: str | None = None  # local path of a state dict (e.g. ImageNet weights)
    # --- method
    method: str = "l2b"  # l2b.methods.METHODS
    normalize: str | None = None  # meta methods: sum | softmax | sigmoid | hard
    temperature: float | None = None
    threshold: float | None = None
    constraint: str | None = None  # l2b only: alpha=0 | beta=0 | alpha+beta=1
    virtual_step: str | None = None  # optimizer (authors' code, default) | sgd (paper Eq. 5)
    engine: str | None = None  # jvp | unroll
    bootstrap_beta: float | None = None  # bootstrap: weight of the observed label (0.8)
    bootstrap_mode: str | None = None  # bootstrap: soft | hard
    method_args: dict = field(default_factory=dict)  # other options of the method ("key" or "method.key")
    # --- optimisation (paper Sec. 4.2: SGD, momentum 0.9, weight decay 5e-4)
    epochs: int = 20
    batch_size: int = 128
    val_batch_size: int | None = None  # None: the training batch size (authors' code)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step | constant (per iteration)
    milestones: list[int] = field(default_factory=lambda: [])  # step: epochs where lr *= gamma
    gamma: float = 0.1
    warmup_epochs: int = 0  # epochs of plain mean cross-entropy before the method starts
    # None: 0.8 for the meta methods (the paper's CIFAR-100/ISIC value; without clipping they can
    # diverge at the default lr), no clipping otherwise; 0: no clipping
    clip_grad_norm: float | None = None
    amp: bool = False  # bf16 autocast (CUDA only)
    sync_bn: bool = False  # under torchrun on CUDA: SyncBatchNorm (non-meta methods only)
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    # --- bookkeeping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = 1024
    # the test set is evaluated every N epochs, at the last epoch and whenever the clean
    # validation accuracy improves (so the last-epoch and best-val test accuracies stay exact)
    test_every: int = 1
    out: str = "runs/run"
    progress: str = "auto"  # auto (a bar on a TTY) | bar | lines | none
    threads: int | None = None  # torch CPU threads; None: what torch picks (results are
    # bit-identical for a fixed thread count, not across thread counts)

    def method_options(self) -> dict[str, Any]:
        """The options the method takes, from the config fields that are set."""
        cls = METHODS[self.method]
        given = {
            "normalize": self.normalize, "temperature": self.temperature,
            "threshold": self.threshold, "constraint": self.constraint,
            "virtual_step": self.virtual_step, "engine": self.engine,
            "beta": self.bootstrap_beta, "mode": self.bootstrap_mode,
        }
        options = {k: v for k, v in given.items() if v is not None and k in cls.options}
        # "METHOD.key" entries apply to that method only (a compare grid mixes methods)
        plain = {k: v for k, v in self.method_args.items() if "." not in k}
        scoped = {k.split(".", 1)[1]: v for k, v in self.method_args.items() if k.startswith(self.method + ".")}
        return {**options, **plain, **scoped}

    def validate(self) -> None:
        """Wrong types, bad values and contradictions fail here, before any data is read."""
        check_types(self)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods: {', '.join(sorted(METHODS))}")
        cls = METHODS[self.method]
        for name in ("normalize", "temperature", "threshold", "constraint", "virtual_step", "engine"):
            if getattr(self, name) is not None and name not in cls.options:
                kind = "meta methods (l2b, l2rw)" if name in META_OPTIONS else "other methods"
                raise ValueError(f"--{name.replace('_', '-')} applies to {kind}, not to method {self.method!r}")
        for name, opt in (("bootstrap_beta", "beta"), ("bootstrap_mode", "mode")):
            if getattr(self, name) is not None and opt not in cls.options:
                raise ValueError(f"--{name.replace('_', '-')} applies to method 'bootstrap', not {self.method!r}")
        cls.coerce(self.method_options())  # unknown options, wrong types and values fail here
        if self.val_per_class is not None and self.val_total is not None:
            raise ValueError("give --val-per-class or --val-total, not both")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose cosine, step or constant")
        if self.augment not in ("auto", "none", "crop-flip"):
            raise ValueError(f"unknown augment {self.augment!r}; choose auto, none or crop-flip")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if self.batches_per_epoch is not None and self.batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {self.batches_per_epoch}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs}]")
        if self.sync_bn and cls.meta:
            raise ValueError(
                f"--sync-bn cannot be used with method {self.method!r}: SyncBatchNorm has no "
                "forward-mode AD, which the meta-gradient needs; each rank's BatchNorm uses its "
                "shard's statistics instead (docs/distributed.md)"
            )
        if self.progress not in ("auto", "bar", "lines", "none"):
            raise ValueError(f"unknown progress {self.progress!r}; choose auto, bar, lines or none")
        for name in ("width", "val_batch_size", "eval_batch_size", "image_size", "val_per_class", "val_total",
                     "train_subset", "threads", "test_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{_flag(name)} must be at least 1, got {value}")
        if self.workers < 0:
            raise ValueError(f"--workers must be 0 or more, got {self.workers}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"--gamma must be a finite number > 0, got {self.gamma}")
        if self.clip_grad_norm is not None and not (math.isfinite(self.clip_grad_norm) and self.clip_grad_norm >= 0):
            raise ValueError(f"--clip-grad-norm must be a finite number > 0 (0: no clipping), got {self.clip_grad_norm}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("--nesterov needs --momentum > 0 (torch.optim.SGD)")
        if any(m < 0 for m in self.milestones):
            raise ValueError(f"--milestones must be epochs >= 0, got {self.milestones}")
        if self.on_bad_images not in ("error", "skip"):
            raise ValueError(f"unknown on_bad_images {self.on_bad_images!r}; choose error or skip")
        check_device(self.device)
        check_noise_spec(self.noise)

    def resolved_clip(self) -> float | None:
        """The gradient-norm clip this run uses: the given one (0: none), else 0.8 for the meta
        methods and none for the others."""
        if self.clip_grad_norm is None:
            return 0.8 if METHODS[self.method].meta_like else None
        return self.clip_grad_norm or None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TrainConfig":
        """A config from a mapping (YAML, config.json, flags), each value converted to its
        field's type: ``nesterov: "no"`` is False, ``epochs: "two"`` is an error naming it."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; valid: {', '.join(sorted(names))}")
        kinds = {f.name: f.type for f in fields(cls)}
        return cls(**{k: coerce_field(k, kinds[k], v, where) for k, v in d.items()})


