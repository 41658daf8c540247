"""The checks of a run's settings that stand apart from ``TrainConfig`` (types, device, method
options, noise syntax, choices, --holdout) and reading a YAML file of settings."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from .coerce import coerce_field
from .methods import METHODS, declared_options


def flag_of(name: str) -> str:
    """A setting's flag name, without the leading --: batch_size -> batch-size."""
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


def on_cuda(name: str) -> bool:
    """Whether --device NAME runs on CUDA (auto: where this torch has it)."""
    if name == "auto":
        import torch

        return torch.cuda.is_available()
    return name.startswith("cuda")


def check_method_options(method: str, given: dict[str, Any]) -> None:
    """``method``'s options built from ``given``: an option that belongs to other methods is
    named with them, and a bad value fails with the option's declared type or choices."""
    cls = METHODS[method]
    foreign = sorted(set(given) - set(cls.option_specs()))
    owners = declared_options()
    for name in foreign:
        if name in owners:
            raise ValueError(f"--{flag_of(name)} is an option of {', '.join(owners[name])}, not of method {method!r}")
    cls.build_options(given)


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


def parse_holdout(text: str) -> tuple[int, int]:
    """``"F/K"`` -> (F, K): the F-th (1-based) of K folds."""
    fold, _, folds = str(text).partition("/")
    try:
        f, k = int(fold), int(folds)
    except ValueError:
        f = k = 0
    if not (k >= 2 and 1 <= f <= k):
        raise ValueError(f"--holdout {text!r}: give F/K, the F-th of K >= 2 folds (1 <= F <= K), e.g. 2/5")
    return f, k


def check_choices(cfg) -> None:
    """Every field declared with ``choices`` holds one of them."""
    for f in fields(cfg):
        allowed = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if allowed and value not in allowed:
            raise ValueError(f"unknown {f.name} {value!r}; choose {', '.join(allowed[:-1])} or {allowed[-1]}")
