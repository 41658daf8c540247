"""A run's model, optimizer and device: the architecture on the device, pretrained weights,
SyncBatchNorm and memory format, the ranks under torchrun, and the deterministic kernels that
``--deterministic`` asks for."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .config import TrainConfig
from .config_checks import check_device
from .distributed import init_from_env
from .console import warn
from .models import create_model, is_custom
from .models.custom import COPY_NAME, changed_source, check_output, check_outside, source_record
from .rundir import load_checkpoint
from .runlock import atomic_write


def load_pretrained(model: torch.nn.Module, path: str) -> None:
    """Load a local state dict (e.g. ImageNet weights), skipping the classifier whose shape
    differs; no download ever happens."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--pretrained {path}: file not found")
    state = load_checkpoint(path, "cpu")
    for key in ("state_dict", "model"):  # a training checkpoint (l2b's checkpoint.pt keeps "model")
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise ValueError(f"--pretrained {path}: holds a {type(state).__name__} without tensors, not a state dict; save "
                         f"the weights with torch.save(model.state_dict(), FILE)")
    if all(k.startswith("module.") for k in tensors):  # saved from a DistributedDataParallel wrapper
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    own = model.state_dict()
    kept = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise ValueError(f"--pretrained {path}: none of its {len(tensors)} tensors matches the model "
                         f"{type(model).__name__} by name and shape (it has e.g. {next(iter(tensors))!r}, the model "
                         f"{next(iter(own))!r}); give weights of the same --model")
    model.load_state_dict(kept, strict=False)
    skipped = sorted(set(own) - set(kept))
    print(f"loaded {len(kept)} tensors from {path}; " + (f"kept the model's own {skipped[:4]}"
          f"{' ...' if len(skipped) > 4 else ''}" if skipped else "every tensor of the model"), flush=True)


def usable_device(name: str) -> str:
    """``name`` where this machine has it, else the CPU: a run trained on a GPU is scored, drawn and
    cross-fitted wherever its directory is copied."""
    try:
        check_device(name)
    except ValueError:
        return "cpu"
    return name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: TrainConfig, ds, device: torch.device, source: dict | None = None) -> torch.nn.Module:
    """The run's architecture for this dataset, on the device (random initial weights).
    ``source``: the run's record of where a builder of one's own came from (config.json
    ``model_source``), to find it from another working directory."""
    return create_model(cfg.model, num_classes=ds.num_classes, in_channels=ds.in_channels,
                        image_size=ds.image_size, width=cfg.width, source=source).to(device)


def input_shape(ds) -> tuple[int, ...]:
    """One input's shape, channels first: an array dataset's own, image files' crop."""
    x = getattr(ds, "x_train", None)
    return tuple(x.shape[1:]) if x is not None else (ds.in_channels, ds.image_size, ds.image_size)


def training_model(cfg: TrainConfig, ds, device: torch.device, world: int,
                   source: dict | None = None) -> torch.nn.Module:
    """The model to train: initialised, pretrained weights loaded, SyncBatchNorm under torchrun
    when asked, on the device in its memory format. A builder of one's own is checked there on a
    blank batch of the data's shape (one logit per class)."""
    model = build_model(cfg, ds, torch.device("cpu"), source)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    if cfg.sync_bn and world > 1:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if is_custom(cfg.model):
        check_output(model, cfg.model, input_shape(ds), ds.num_classes, device)
    return model


def own_builder(cfg: TrainConfig, saved: dict, run: Path) -> dict | None:
    """The run's record of where its own model builder came from (config.json ``model_source``),
    with a warning where that file changed since the run trained; None for a registered model."""
    if not is_custom(cfg.model):
        return None
    source = saved.get("model_source")
    check_outside(cfg.model, source, run)
    note = changed_source(cfg.model, source, run)
    if note:
        warn(note)
    return source


def kept_source(spec: str, out: Path) -> dict:
    """A new run's record of its own model builder (config.json ``model_source``: the file, the
    folder its module was imported from, the file's SHA-256), with a copy of the file in the run
    directory (``model_source.py``), kept for the record and never imported."""
    record, data = source_record(spec)
    if data is not None:
        atomic_write(out / COPY_NAME, lambda tmp: tmp.write_bytes(data))
    return record


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer: SGD with momentum and weight decay (the paper's), or AdamW."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                 eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)


def start_ranks(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """(device, rank, world size). Under torchrun every rank runs ``train`` on its shard of each
    global batch (l2b.distributed), on its own GPU when the device is CUDA."""
    device = resolve_device(cfg.device)
    rank, world, local_rank = init_from_env(device.type)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device, rank, world


@contextlib.contextmanager
def deterministic_kernels(on: bool):
    """``--deterministic``: torch's deterministic kernels (cuDNN's, cuBLAS's and its own) for the run,
    warning for an op that has none, and the process's previous choice restored after."""
    if not on:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reads it as it starts
    cudnn = torch.backends.cudnn
    was = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           cudnn.deterministic, cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        cudnn.deterministic, cudnn.benchmark = was[2], was[3]
