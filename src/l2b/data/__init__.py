"""Datasets (a registry), the clean validation split, and batched augmentation.

``load_dataset("digits")``, ``load_dataset("fashion-mnist")``, ``load_dataset("cifar10:/data")``:
see docs/data.md for every name and the layout it reads.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from .arrays import ArrayDataset, load_cifar10, load_cifar100, load_digits
from .augment import augment_batch, normalize_batch
from .files import FileDataset, load_csv, load_folder
from .idx import load_fashion_mnist, load_mnist
from .npz import load_npz
from .published import load_clothing1m, load_isic2019

DATASETS: dict[str, Callable] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "npz": load_npz,
    "folder": load_folder,
    "csv": load_csv,
    "isic2019": load_isic2019,
    "clothing1m": load_clothing1m,
}
FILE_DATASETS = ("folder", "csv", "isic2019", "clothing1m")


def expand_home(spec: str) -> str:
    """``NAME:~/PATH`` with the home folder written out: a shell expands ``~`` only where a word
    begins, so ``--data folder:~/photos`` reaches l2b as typed."""
    name, sep, path = spec.partition(":")
    return f"{name}:{os.path.expanduser(path)}" if sep and path.startswith("~") else spec


def load_dataset(spec: str, **options) -> ArrayDataset | FileDataset:
    """Load ``NAME`` or ``NAME:PATH``. Options (``on_bad_images=``, ``image_size=``) go to the
    image-file datasets."""
    name, _, path = expand_home(spec).partition(":")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
    if name in FILE_DATASETS:
        return DATASETS[name](path or None, **options)
    if options:
        raise ValueError(f"{name} takes no options (got {sorted(options)})")
    return DATASETS[name](path or None)


def clean_val_split(labels, *, per_class: int | None = None, total: int | None = None,
                    seed: int = 0, class_names=None) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (train, clean validation), exactly class-balanced.

    Give ``per_class`` (samples of every class) or ``total`` (a multiple of the class count).
    Indices are sorted, disjoint and cover every sample; the split is a pure function of
    (labels, per_class, seed). Take it on the TRUE labels, before noise is applied to the rest.
    The paper: 1000 on CIFAR-10 (100/class) and CIFAR-100 (10/class).
    """
    y = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    classes, counts = np.unique(y, return_counts=True)
    if (per_class is None) == (total is None):
        raise ValueError("give exactly one of per_class= or total=")
    if total is not None:
        if total % len(classes):
            raise ValueError(
                f"a clean set of {total} cannot be split evenly over {len(classes)} classes; give a multiple of "
                f"{len(classes)} (--val-total; total= in Python) or a number per class (--val-per-class; per_class=)"
            )
        per_class = total // len(classes)
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    short = counts < per_class
    if short.any():
        c = int(classes[short][0])
        name = str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
        raise ValueError(
            f"class {name!r} has only {int(counts[short][0])} samples, fewer than the {per_class} per "
            "class requested for the clean validation set; lower --val-per-class / --val-total (per_class= / "
            "total= in Python)"
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    val = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in classes])
    val = np.sort(val)
    train = np.setdiff1d(np.arange(len(y)), val)
    return train, val


__all__ = [
    "ArrayDataset", "FileDataset", "DATASETS", "FILE_DATASETS", "load_dataset", "clean_val_split",
    "augment_batch", "normalize_batch",
]
