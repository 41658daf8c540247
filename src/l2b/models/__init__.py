"""Model registry: ``create_model(name, num_classes=, in_channels=, image_size=, width=)``.

Every entry takes the same arguments (timm-style); ``width`` is the model's size knob (base
channels, or hidden units of the MLP) and ``None`` keeps its default. Every model splits into
``forward_features(x)`` (the penultimate features, e.g. what MLC's label-correction net reads)
and ``head`` (the classifier), as timm's models do: ``features(model, x)`` and ``head(model)``
work on all of them, torchvision's ResNets and a Sequential ending in a Linear included.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .cpu_guard import guard_strided_1x1
from .custom import build, is_custom, split_spec
from .preact_resnet import PreActResNet18
from .small import MLP, SmallCNN


def _preact_resnet18(num_classes, in_channels, image_size, width, **extra):
    return PreActResNet18(num_classes, in_channels, width=width or 64, **extra)


def _small_cnn(num_classes, in_channels, image_size, width, **extra):
    return SmallCNN(num_classes, in_channels, width=width or 32, **extra)


def _mlp(num_classes, in_channels, image_size, width, **extra):
    return MLP(num_classes, in_channels, image_size=image_size, hidden=width or 128, **extra)


def _torchvision(arch: str):
    def build(num_classes, in_channels, image_size, width, **extra):
        if extra:
            raise ValueError(f"{arch} takes no other arguments, got {sorted(extra)}")
        try:
            import torchvision
        except ImportError:
            raise ImportError(f"{arch} needs torchvision: pip install 'l2b[torchvision]'") from None
        if width is not None:
            raise ValueError(f"{arch} has a fixed width; drop --width")
        model = getattr(torchvision.models, arch)(weights=None)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "preact-resnet18": _preact_resnet18,
    "small-cnn": _small_cnn,
    "mlp": _mlp,
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
}


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the classifier head reads: ``model.forward_features(x)``, or for a
    torchvision ResNet everything up to its ``fc``."""
    kind = _split_kind(model)
    if kind == "own":
        return model.forward_features(x)
    if kind == "sequential":
        return model[:-1](x)
    if kind == "torchvision":
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        return torch.flatten(model.avgpool(x), 1)
    raise TypeError(f"{type(model).__name__} has no forward_features(); give it one (and a head) to use it here")


def _split_kind(model: nn.Module) -> str | None:
    if hasattr(model, "forward_features"):
        return "own"
    if isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear):
        return "sequential"
    if all(hasattr(model, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer4", "avgpool", "fc")):
        return "torchvision"
    return None


def check_features(model: nn.Module, who: str) -> None:
    """A one-line error, before training, where ``who`` (a method that reads the model's
    penultimate features) cannot find them in this model."""
    if _split_kind(model) is None:
        raise ValueError(f"{who} reads the model's features, what its classifier reads: {type(model).__name__} has no "
                         f"forward_features(x); give it one and a `head` (an nn.Linear), with model(x) == "
                         f"model.head(model.forward_features(x)), as timm's and l2b's models have")


def head(model: nn.Module) -> nn.Module:
    """The classifier that maps ``features(model, x)`` to logits, the one lookup every part of
    l2b uses: ``model.head`` (timm's convention; set it on your own model), ``model.fc``
    (torchvision), or the last module when it is an ``nn.Linear`` (a Sequential's, or the model
    itself); through a DistributedDataParallel wrapper."""
    inner = getattr(model, "module", model)
    for candidate in (getattr(inner, "head", None), getattr(inner, "fc", None)):
        if isinstance(candidate, nn.Module):
            return candidate
    last = list(inner.modules())[-1]
    if isinstance(last, nn.Linear):
        return last
    raise TypeError(f"{type(inner).__name__} has no head; give it one (and forward_features) to use it here")


def predict_probs(model: nn.Module, data, batch_size: int):
    """The model's softmax (float32 numpy, n x classes) on every sample of a split
    (``l2b.data.batches``), in eval mode, without augmentation, in the split's own order."""
    probs = None
    with torch.no_grad(), eval_mode(model):
        for x, _, idx, _ in data.epoch(batch_size, seed=0, augment=False, whole=True):
            p = torch.softmax(model(x).float(), dim=1).cpu()
            if probs is None:
                probs = torch.zeros(len(data), p.shape[1])
            probs[idx.cpu()] = p
    return probs.numpy()


@contextmanager
def eval_mode(model: nn.Module):
    """Run a block with ``model`` in eval mode, then restore its mode (train or eval)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def num_features(model: nn.Module) -> int:
    return head(model).in_features


def check_model_name(name: str) -> None:
    """A registered model's name or a builder of one's own (``MODULE:FUNCTION``,
    ``FILE.py:FUNCTION``); a one-line error otherwise."""
    if is_custom(name):
        split_spec(name)
    elif name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}, or your own as "
                         f"MODULE:FUNCTION or FILE.py:FUNCTION (docs/methods.md, \"Your own architecture\")")


def create_model(name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32,
                 width: int | None = None, source: dict | None = None, **extra) -> nn.Module:
    """Build a registered model by name, or one's own builder (``MODULE:FUNCTION``,
    ``FILE.py:FUNCTION``: ``l2b.models.custom``; ``source``, a run's record of where it was, helps
    find it from elsewhere); ``extra`` goes to a registered model's constructor (e.g. the MLP's
    ``depth``), and an argument it does not take is a one-line error."""
    check_model_name(name)
    if is_custom(name):
        if extra:
            raise ValueError(f"--model {name}: l2b gives a builder of your own only num_classes, in_channels, "
                             f"image_size and width; got {sorted(extra)}")
        return build(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width,
                     recorded=source)
    try:
        return MODELS[name](num_classes, in_channels, image_size, width, **extra)
    except TypeError as err:
        if extra and "unexpected keyword" in str(err):
            raise ValueError(f"model {name!r} does not take {sorted(extra)} ({err})") from None
        raise


__all__ = ["MODELS", "check_features", "check_model_name", "create_model", "is_custom", "features", "head", "num_features", "eval_mode", "PreActResNet18", "MLP", "SmallCNN",
           "guard_strided_1x1"]
