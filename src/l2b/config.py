"""Every setting of a training run, its type and default, and the checks that run before any
data are read: ``TrainConfig`` (the checks it calls: ``config_checks``).

Values from YAML, ``config.json`` and flags go through ``TrainConfig.from_dict``, which converts
each to its field's declared type (``"no"`` is False for a bool; ``"two"`` for an int is an error
naming the setting); ``validate()`` then checks ranges and contradictions.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .coerce import coerce_field
from .config_checks import (check_choices, check_device, check_method_options, check_noise_spec, check_types,
                            flag_of, on_cuda, parse_holdout)
from .data import FILE_DATASETS, expand_home
from .data.files import IMAGENET_SIZE, own_image_size
from .methods import METHODS, declared_options, needs_of, options_of
from .models import check_model_name

# settings of earlier versions that are now options of one method
RENAMED_OPTIONS = {"bootstrap_beta": "bootstrap.beta", "bootstrap_mode": "bootstrap.mode"}

# datasets whose labels are the user's own (not a benchmark's true labels): no noise is injected
# and no clean set is drawn from their labels unless asked for by name
OWN_LABEL_DATA = ("folder", "csv", "npz", "isic2019", "clothing1m")


def own_labels(data: str) -> bool:
    return data.partition(":")[0] in OWN_LABEL_DATA


def labels_as_given(data: str, noise: str) -> bool:
    """Training on the user's own labels with no noise injected: which of them are wrong is unknown."""
    return own_labels(data) and noise == "none"


def setting(default: Any = MISSING, help: str = "", factory: Any = MISSING, choices: tuple | None = None):
    """A TrainConfig field with its one-line help and, for a choice, its allowed values: the CLI's
    ``--help`` and ``validate()`` read both from here, so each choice is typed once."""
    meta = {"help": help, "choices": choices}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # --- data and noise
    data: str = setting("digits", "dataset: NAME or NAME:PATH (digits, mnist:DIR, fashion-mnist[:DIR], cifar10:DIR, "
                        "cifar100:DIR, npz:FILE, folder:DIR, csv:FILE, isic2019:DIR, clothing1m:DIR)")
    # "auto" (noise, val_per_class) is resolved on construction: see __post_init__
    noise: str = setting("auto", "noise to inject; auto: symmetric:0.4 on the research datasets, none on your own "
                         "data (npz, folder, csv, isic2019, clothing1m). A spec (symmetric:R, symmetric-exclusive:R, "
                         "asymmetric:R[:FILE], asymmetric-cifar10:R, asymmetric-cifar100:R, pairflip:R, matrix:FILE, "
                         "instance:R, cifar10n:TYPE, cifar100n:noisy, none)")
    noise_seed: int | None = setting(None, "seed of the noise (default: --seed)")
    val_per_class: int | None = setting("auto", "clean validation images per class drawn from train ('none': the "
                                        "dataset's own clean set; auto: 10 on the research datasets, your data's own "
                                        "clean set on npz/folder data)")  # type: ignore[assignment]
    val_total: int | None = setting(None, "clean validation images in total (a multiple of the class count)")
    train_subset: int | None = setting(None, "keep only this many random noisy training samples")
    holdout: str | None = setting(None, "F/K: leave out the F-th of K folds of the noisy training samples, each "
                                        "class dealt evenly (l2b label-issues --cross-fit trains these)")
    exclude: str | None = setting(None, "a csv of training samples to leave out, e.g. a reviewed label_issues.csv: "
                                        "rows name them by index (their position in the dataset's training set, as "
                                        "label-issues writes it) or by path (image files)")
    relabel: str | None = setting(None, "a csv of training labels corrected: rows name training samples as --exclude's "
                                        "do, and the label each is to carry (a label column: class name or number; "
                                        "else label_issues.csv's suggested_class, its suggestions accepted)")
    train_on_clean: bool = setting(False, "also train on the clean set, with its clean labels (it stays the "
                                          "validation set, so the best-val epoch is then chosen on training data)")
    batches_per_epoch: int | None = setting(None, "batches per epoch (default: one pass over the training set)")
    balance_classes: bool = setting(False, "draw each epoch equally from every noisy class (Clothing1M: with "
                                           "--batches-per-epoch 250)")
    augment: str = setting("auto", "training augmentation; auto: the dataset's default", choices=("auto", "none", "crop-flip"))
    image_size: int | None = setting(None, "crop size of image-file datasets (default: 224 with --pretrained "
                                           "weights and on isic2019 / clothing1m; on folder and csv data the images' own "
                                           "size, their median short side, at most 224)")
    on_bad_images: str = setting("error", "image-file datasets: what to do with unreadable images",
                                 choices=("error", "skip"))
    workers: int | None = setting(None, "DataLoader workers for image-file datasets (default: the machine's cores, at"
                                        " most 8)")
    meta_set: str = setting("clean", "the meta steps' clean set: clean (the verified clean set) | select:KIND, selected "
                             "from the noisy training data after the warm-up (small-loss | confident | pseudo)")
    meta_set_size: int | None = setting(None, "with --meta-set select: samples per class (default: 2% of the training "
                                              "set, spread over the classes)")
    meta_refresh: int | None = setting(None, "with --meta-set select: select again every R epochs (0: once, after the "
                                             "warm-up; default: epochs // 5, five selections, measured better than one)")
    meta_set_leaves: bool | None = setting(None, "with --meta-set select: the selected samples leave the noisy "
                                                 "training stream (default: yes, measured a little better; "
                                                 "--meta-set-leaves no keeps them in it)")
    # --- model
    model: str = setting("mlp", "preact-resnet18 | small-cnn | mlp | resnet18 | resnet50, or your own builder: "
                                "MODULE:FUNCTION or FILE.py:FUNCTION, called with num_classes= (and in_channels=, "
                                "image_size=, width= where it takes them)")
    width: int | None = setting(None, "model width (base channels / hidden units)")
    pretrained: str | None = setting(None, "local state-dict file to initialise the model from (e.g. ImageNet "
                                           "weights)")
    # --- method
    method: str = setting("l2b", "training method (l2b options lists them)")
    # the method's options (declared by each method: l2b.methods.options): "key" applies to the
    # run's method, "method.key" to that method only (a compare grid mixes methods)
    method_args: dict = field(default_factory=dict)
    # --- optimisation (paper Sec. 4.2: SGD, momentum 0.9, weight decay 5e-4)
    epochs: int = setting(20, "training epochs")
    batch_size: int = setting(128, "training batch size")
    val_batch_size: int | None = setting(None, "clean batch size of meta methods (default: --batch-size)")
    lr: float = setting(0.1, "learning rate")
    optimizer: str = setting("sgd", "sgd (the paper's) or adamw; the meta step of l2b and l2rw replays either "
                                    "(docs/methods.md, \"The virtual step\")", choices=("sgd", "adamw"))
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "weight decay (SGD's L2 term; AdamW's decoupled decay)")
    nesterov: bool = setting(False, "Nesterov momentum")
    adam_beta1: float = setting(0.9, "AdamW's first-moment decay")
    adam_beta2: float = setting(0.999, "AdamW's second-moment decay")
    adam_eps: float = setting(1e-8, "AdamW's epsilon")
    schedule: str = setting("cosine", "learning-rate schedule (per iteration)", choices=("cosine", "step", "constant"))
    milestones: list[int] = setting(factory=lambda: [], help="step schedule: epochs at which lr *= gamma (comma-separated)")
    gamma: float = setting(0.1, "step schedule factor")
    warmup_epochs: int = setting(0, "epochs of plain cross-entropy before the method starts")
    # the meta methods' default (their default_clip) is the paper's CIFAR-100/ISIC value; without
    # clipping they can diverge at the default lr
    clip_grad_norm: float | None = setting(None, "clip the gradient norm to this value; 0: no clipping (default: the "
                                                 "method's: 0.8 for l2b, l2rw, mwnet, mlc, none for the others)")
    amp: bool = setting(False, "bf16 autocast (CUDA only)")
    sync_bn: bool = setting(False, "under torchrun on CUDA: synchronise BatchNorm statistics across ranks (methods "
                                   "without forward-mode AD)")
    channels_last: bool = setting(False, "NHWC memory format for convolutions (helps on recent GPUs)")
    deterministic: bool = setting(False, "deterministic GPU kernels: a run repeats, and resumes, bit for bit on the "
                                         "same GPU (an op without such a kernel warns, naming itself); the "
                                         "CPU's results are already")
    # --- bookkeeping
    seed: int = setting(0, "random seed (data order, augmentation, init, noise, split)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    eval_batch_size: int = setting(1024, "evaluation batch size")
    weight_epochs: int = setting(5, "epochs of per-sample weights kept in weights.npz for `l2b label-issues` (k x n x"
                                    " 11 bytes)")
    test_every: int = setting(1, "evaluate the test set every N epochs (and at the last epoch and each new best "
                                 "validation accuracy, so the reported test accuracies are exact)")
    out: str = setting("runs/run", "run directory")
    progress: str = setting("auto", "progress display; auto: a bar on a terminal, lines otherwise",
                            choices=("auto", "bar", "lines", "none"))
    threads: int | None = setting(None, "torch CPU threads (default: 1 on a machine of 2 cores or fewer, else what "
                                        "torch picks); results are bit-identical for a fixed count")

    def __post_init__(self) -> None:
        """Resolve the data-dependent defaults, so that a config always holds what runs: a
        dataset of the user's own labels gets no injected noise and its own clean set."""
        self.data = expand_home(self.data)
        own = own_labels(self.data)
        if self.noise == "auto":
            self.noise = "none" if own else "symmetric:0.4"
        if self.val_per_class == "auto":
            self.val_per_class = None if own or self.val_total is not None else 10
        if self.image_size is None:  # ImageNet-sized crops, or a folder's own size, read from its images
            kind, _, path = self.data.partition(":")
            self.image_size = (own_image_size(kind, path) if kind in ("folder", "csv") and not self.pretrained
                               else IMAGENET_SIZE)
        # a selected meta set leaves the noisy stream and is selected again every fifth of the run
        # (benchmarks/no_clean_set.py); without one these are 0 / False, as every run has recorded
        select = self.meta_set != "clean"
        for name in ("exclude", "relabel"):  # found from any working directory later (label-issues, report)
            if getattr(self, name):
                setattr(self, name, str(Path(getattr(self, name)).resolve()))
        if self.meta_refresh is None:
            self.meta_refresh = max(1, self.epochs // 5) if select else 0
        if self.meta_set_leaves is None:
            self.meta_set_leaves = select

    def method_options(self) -> dict[str, Any]:
        """The options given to the run's method: the plain ``method_args`` entries, then the
        ones scoped to this method ("METHOD.key")."""
        plain = {k: v for k, v in self.method_args.items() if "." not in k}
        scoped = {k.split(".", 1)[1]: v for k, v in self.method_args.items() if k.startswith(self.method + ".")}
        return {**plain, **scoped}

    def validate(self) -> None:
        """Wrong types, bad values and contradictions fail here, before any data is read."""
        check_types(self)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods: {', '.join(sorted(METHODS))}")
        cls = METHODS[self.method]
        check_method_options(self.method, self.method_options())
        scoped: dict[str, dict[str, Any]] = {}  # options for the other methods of a grid
        for key, value in self.method_args.items():
            if "." in key:
                scope, name = key.split(".", 1)
                if scope not in METHODS:
                    raise ValueError(f"method option {key!r}: no method {scope!r}; valid methods: "
                                     f"{', '.join(sorted(METHODS))}")
                scoped.setdefault(scope, {})[name] = value
        for scope, given in scoped.items():
            if scope != self.method:
                check_method_options(scope, given)
        if self.val_per_class is not None and self.val_total is not None:
            raise ValueError("give --val-per-class or --val-total, not both")
        check_choices(self)
        check_model_name(self.model)
        for name in ("seed", "noise_seed"):  # numpy's generators take 0 .. 2**32 - 1
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32:
                raise ValueError(f"--{flag_of(name)} must be in 0 .. 2**32 - 1, got {value}")
        for name in ("epochs", "batch_size", "batches_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{flag_of(name)} must be at least 1, got {value}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be in [0, epochs={self.epochs}]")
        options = options_of(self.method, self.method_options())
        if self.sync_bn and cls.uses_forward_ad(options):
            raise ValueError(
                f"--sync-bn cannot be used with method {self.method!r}: SyncBatchNorm has no "
                "forward-mode AD, which its meta-gradient needs; " + cls.forward_ad_remedy(options)
                + " (each rank's BatchNorm then uses its shard's statistics: docs/distributed.md)"
            )
        self._check_meta_set()
        if self.holdout is not None:
            parse_holdout(self.holdout)
        for name, what in (("exclude", "leave out (e.g. a label_issues.csv)"),
                           ("relabel", "relabel and their labels (e.g. a reviewed label_issues.csv)")):
            if getattr(self, name) is not None and not Path(getattr(self, name)).is_file():
                raise FileNotFoundError(f"--{name} {getattr(self, name)}: file not found; give a csv of the training "
                                        f"samples to {what}")
        for name in ("width", "val_batch_size", "eval_batch_size", "image_size", "val_per_class", "val_total",
                     "train_subset", "threads", "test_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{flag_of(name)} must be at least 1, got {value}")
        if self.weight_epochs < 0:
            raise ValueError(f"--weight-epochs must be 0 or more, got {self.weight_epochs}")
        if self.workers is not None and self.workers < 0:
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
        self._check_optimizer()
        if self.milestones and self.schedule != "step":
            raise ValueError(f"--milestones {self.milestones} apply to --schedule step only, not {self.schedule}; "
                             f"drop them or give --schedule step")
        if self.amp and not on_cuda(self.device):
            raise ValueError(f"--amp is bf16 autocast on CUDA, and this run is on the CPU (--device {self.device}); "
                             f"drop --amp")
        if self.image_size != IMAGENET_SIZE and self.data.partition(":")[0] not in FILE_DATASETS:
            raise ValueError(f"--image-size {self.image_size}: {self.data} is held in memory at its own size; the crop "
                             f"size applies to image files ({', '.join(FILE_DATASETS)}); drop it")
        if any(m < 0 for m in self.milestones):
            raise ValueError(f"--milestones must be epochs >= 0, got {self.milestones}")
        check_device(self.device)
        check_noise_spec(self.noise)

    def _check_optimizer(self) -> None:
        defaults = TrainConfig.__dataclass_fields__
        own = {"sgd": ("momentum", "nesterov"), "adamw": ("adam_beta1", "adam_beta2", "adam_eps")}
        for name in own["adamw" if self.optimizer == "sgd" else "sgd"]:
            if getattr(self, name) != defaults[name].default:
                raise ValueError(f"--{flag_of(name)} is {'SGD' if self.optimizer == 'adamw' else 'AdamW'}'s, and this "
                                 f"run trains with --optimizer {self.optimizer}; drop it" +
                                 (" (AdamW's first moment is --adam-beta1)" if name == "momentum" else ""))
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"--{flag_of(name)} must be in [0, 1), got {getattr(self, name)}")
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ValueError(f"--adam-eps must be a finite number > 0, got {self.adam_eps}")
        if self.optimizer == "adamw" and not METHODS[self.method].replays_adam:
            raise ValueError(f"--optimizer adamw: method {self.method!r} looks ahead with an SGD step at non-zero "
                             f"weights, as its reference does, where an AdamW step is not linear; train it with "
                             f"--optimizer sgd")

    def _check_meta_set(self) -> None:
        from .metaset import parse_meta_set

        kind = parse_meta_set(self.meta_set)
        if self.meta_refresh < 0:
            raise ValueError(f"--meta-refresh must be 0 or more, got {self.meta_refresh}")
        if self.meta_set_size is not None and self.meta_set_size < 1:
            raise ValueError(f"--meta-set-size must be at least 1, got {self.meta_set_size}")
        if kind is None:
            if self.meta_set_size is not None or self.meta_refresh or self.meta_set_leaves:
                raise ValueError("--meta-set-size, --meta-refresh and --meta-set-leaves apply to --meta-set select:KIND")
            return
        if not needs_of(self.method, self.method_options()).clean_per_step:
            raise ValueError(f"--meta-set {self.meta_set}: method {self.method!r} takes no clean batch per step; the "
                             f"selected meta set feeds the meta steps of l2b, l2rw, mwnet or mlc")
        if self.warmup_epochs < 1:
            raise ValueError(f"--meta-set {self.meta_set} selects with the model of the warm-up epochs: give "
                             f"--warmup-epochs 1 or more")
        if self.train_on_clean:
            raise ValueError("--train-on-clean trains on the verified clean set, which --meta-set select replaces")

    def resolved_workers(self) -> int:
        import os

        return self.workers if self.workers is not None else min(8, os.cpu_count() or 1)

    def resolved_threads(self) -> int | None:
        """The torch CPU threads of this run: the given count, else 1 on a machine of 2 cores or
        fewer (there one thread lost <= 9% when the machine was quiet and won 1.3-6.7x when it was
        busy: docs/reliability.md "Threads and reproducibility"), else None (torch's own choice)."""
        import os

        if self.threads is not None:
            return self.threads
        return 1 if (os.cpu_count() or 1) <= 2 else None

    def resolved_clip(self) -> float | None:
        """The gradient-norm clip this run uses: the given one (0: none), else 0.8 for the meta
        methods and none for the others."""
        if self.clip_grad_norm is None:
            return METHODS[self.method].default_clip(options_of(self.method, self.method_options()))
        return self.clip_grad_norm or None

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "TrainConfig":
        """A config from a mapping (YAML, config.json, flags), each value converted to its
        field's type: ``nesterov: "no"`` is False, ``epochs: "two"`` is an error naming it.
        Top-level method options (``normalize: softmax``) join ``method_args``."""
        names = {f.name for f in fields(cls)}
        options = declared_options()
        d = dict(d)
        moved = {}
        for key in [k for k in d if k not in names]:
            value = d.pop(key)
            if key in options or key in RENAMED_OPTIONS:
                if value is not None:  # None: the method's default (what earlier config.json files hold)
                    moved[RENAMED_OPTIONS.get(key, key)] = value
            else:
                d[key] = value
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{where}: unknown setting(s) {unknown}; valid: {', '.join(sorted(names))} "
                             f"and the methods' options: {', '.join(sorted(options))}")
        kinds = {f.name: f.type for f in fields(cls)}
        values = {k: coerce_field(k, kinds[k], v, where) for k, v in d.items()}
        if moved:
            values["method_args"] = {**moved, **values.get("method_args", {})}
        return cls(**values)


def resumed_config(run: str | Path, given: dict[str, Any], flag: bool = True) -> TrainConfig:
    """The settings a stopped run continues with: its own (``run/config.json``), changed only where
    ``given`` changes a setting that leaves its results alone (``NOT_RESULTS``: progress, workers,
    devices, threads...) or names where the same data moved (``data``, checked against the run's
    record when the data are read). ``given``: settings by name, method options among them (by name
    or under ``method_args``); one that would change the results is a ValueError naming it and the
    value the run has. ``flag``: name the settings as command-line flags (else as keywords)."""
    from .rundir import NOT_RESULTS, read_json

    saved = Path(run) / "config.json"
    if not saved.is_file():
        raise FileNotFoundError(f"{run}: no config.json, so nothing to resume; is it the directory of a run (its "
                                f"--out)?")
    cfg = TrainConfig.from_dict(read_json(saved, need=("config",))["config"], str(saved))
    cfg.out = str(run)  # the directory given, even when the run was moved or copied
    asked = TrainConfig.from_dict(given, "flags" if flag else "resume")
    name = (lambda k: "--" + k.replace("_", "-")) if flag else (lambda k: k)  # noqa: E731
    changed = {k: getattr(asked, k) for k in given if k in cfg.__dict__ and k != "method_args"
               and getattr(cfg, k) != getattr(asked, k)}
    unsafe = [f"{name(k)} {v!r} (the run has {getattr(cfg, k)!r})" for k, v in changed.items()
              if k not in NOT_RESULTS and k != "data"]
    if asked.method_args:  # a method option given again must be the one the run has
        before = options_of(cfg.method, cfg.method_options())
        after = options_of(cfg.method, TrainConfig(method=cfg.method, method_args={**cfg.method_args, **asked.method_args})
                           .method_options())
        unsafe += [f"{name(k)} {after[k]!r} (the run has {before[k]!r})" for k in before if before[k] != after[k]]
    if unsafe:
        keep = ", ".join(name(k) for k in NOT_RESULTS if k != "out")
        raise ValueError(f"{run} resumes with its own settings; {', '.join(unsafe)} would change its results. Start a "
                         f"new run with another {name('out')} instead (only {keep} may change, and {name('data')} to "
                         f"name where the same data moved)")
    for k, v in changed.items():
        setattr(cfg, k, v)
    return cfg
