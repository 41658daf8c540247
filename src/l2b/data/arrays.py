"""Small-image datasets that live in memory as uint8 tensors: digits, CIFAR (MNIST-style IDX files:
``idx``; your own arrays: ``npz``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..safe_pickle import load_pickle

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")


@dataclass
class ArrayDataset:
    """Train and test images as uint8 tensors N×C×H×W, labels as int64 tensors.

    ``x_val``/``y_val`` hold the dataset's own clean set where it has one; ``coarse_train`` /
    ``coarse_test`` the superclass labels (CIFAR-100); ``asymmetric_map`` the class map that
    ``asymmetric:R`` noise uses; ``augment`` the default training augmentation.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    coarse_train: torch.Tensor | None = None
    coarse_test: torch.Tensor | None = None
    asymmetric_map: dict[int, int] | None = None
    augment: dict = field(default_factory=lambda: {"crop_padding": 0, "flip": False})
    root: Path | None = None
    _stats: tuple | None = field(default=None, init=False, repr=False, compare=False)  # mean_std's, once

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def image_size(self) -> int:
        return self.x_train.shape[-1]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the training images, in [0, 1] units, from each channel's
        histogram of its 256 levels (exact in float64, and no float copy of the images: CIFAR's
        would take 1.2 GB). Computed once: a run normalises by them and records them for new inputs."""
        if self._stats is None:
            self._stats = self._mean_std()
        return self._stats

    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        levels = torch.arange(256, dtype=torch.float64)
        n = self.x_train.numel() // self.in_channels
        means, stds = [], []
        for c in range(self.in_channels):
            counts = torch.bincount(self.x_train[:, c].reshape(-1), minlength=256).double()
            mean = counts @ levels / n
            means.append(mean / 255.0)
            stds.append((counts @ (levels - mean) ** 2 / (n - 1)).sqrt() / 255.0)
        return torch.stack(means).float(), torch.stack(stds).clamp(min=1e-3).float()

    def check(self) -> "ArrayDataset":
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:  # suggested labels and reports would name two classes alike
            raise ValueError(f"{self.name}: class name(s) {twice[:5]} given more than once in 'classes'; give each class "
                             f"its own name, in label order 0..K-1")
        if self.num_classes < 2:
            raise ValueError(f"{self.name}: {self.num_classes} class(es); a classifier needs at least 2 "
                             "(check the labels, or give the class names as 'classes' in the npz)")
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test),
                            ("val", self.x_val, self.y_val)):
            if x is None:
                continue
            if len(x) != len(y):
                raise ValueError(f"{self.name}: {split} has {len(x)} images but {len(y)} labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                bad = int(torch.nonzero((y < 0) | (y >= self.num_classes))[0])
                raise ValueError(
                    f"{self.name}: {split} label {int(y[bad])} at index {bad} is outside "
                    f"[0, {self.num_classes})"
                )
        empty = sorted(set(range(self.num_classes)) - set(torch.unique(self.y_train).tolist()))
        if empty:
            warnings.warn(f"{self.name}: class(es) {empty[:10]}{' ...' if len(empty) > 10 else ''} have no "
                          f"training sample (of {self.num_classes} classes, counted from every split's labels)",
                          stacklevel=3)
        return self


def _labels(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


def load_digits(path: str | None = None) -> ArrayDataset:
    """scikit-learn's bundled 8×8 digits (1,797 images); a fixed, stratified 1,297 / 500 split."""
    if path:
        raise ValueError("digits takes no path: it is bundled with scikit-learn")
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise ImportError("the digits dataset needs scikit-learn: pip install 'l2b[data]'") from None
    d = sk_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    rng = np.random.Generator(np.random.PCG64(20240101))
    test = np.concatenate([rng.permutation(np.flatnonzero(d.target == c))[:50] for c in range(10)])
    train = np.setdiff1d(np.arange(len(images)), test)
    return ArrayDataset(
        "digits", torch.from_numpy(images[train]), _labels(d.target[train]),
        torch.from_numpy(images[np.sort(test)]), _labels(d.target[np.sort(test)]),
        tuple(str(c) for c in range(10)),
    ).check()


def _cifar_batch(path: Path, label_key: bytes, coarse_key: bytes | None = None):
    d = load_pickle(path)
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        raise ValueError(f"{path}: not a python-pickle CIFAR batch (keys {sorted(d)[:5] if isinstance(d, dict) else type(d)})")
    x = np.asarray(d[b"data"], dtype=np.uint8)
    y = np.asarray(d[label_key], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != 3072:
        raise ValueError(f"{path}: data has shape {x.shape}, expected N×3072")
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    coarse = np.asarray(d[coarse_key], dtype=np.int64) if coarse_key else None
    return x.reshape(-1, 3, 32, 32), y, coarse


def _decode(names) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _check_downloaded(name: str, root: Path, first: Path, folder: str) -> None:
    if not first.is_file():
        where = "no such directory" if not root.is_dir() else f"neither {root / folder}/ nor {root / first.name} is there"
        raise FileNotFoundError(f"{name}:{root}: {where}; fetch it with `l2b download {name} {root}`")


def load_cifar10(path: str | None) -> ArrayDataset:
    if not path:
        raise ValueError("cifar10 needs its directory: cifar10:DIR (holding cifar-10-batches-py/; `l2b download "
                         "cifar10 DIR` fetches it)")
    root = Path(path)
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    _check_downloaded("cifar10", root, base / "data_batch_1", "cifar-10-batches-py")
    train = [_cifar_batch(base / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    xt, yt, _ = _cifar_batch(base / "test_batch", b"labels")
    x = np.concatenate([b[0] for b in train])
    y = np.concatenate([b[1] for b in train])
    ds = ArrayDataset("cifar10", torch.from_numpy(x), _labels(y), torch.from_numpy(xt), _labels(yt),
                      CIFAR10_CLASSES, augment={"crop_padding": 4, "flip": True}, root=root)
    from ..noise import CIFAR10_ASYMMETRIC_MAP

    ds.asymmetric_map = dict(CIFAR10_ASYMMETRIC_MAP)
    return ds.check()


def load_cifar100(path: str | None) -> ArrayDataset:
    if not path:
        raise ValueError("cifar100 needs its directory: cifar100:DIR (holding cifar-100-python/; `l2b download "
                         "cifar100 DIR` fetches it)")
    root = Path(path)
    base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
    _check_downloaded("cifar100", root, base / "train", "cifar-100-python")
    x, y, c = _cifar_batch(base / "train", b"fine_labels", b"coarse_labels")
    xt, yt, ct = _cifar_batch(base / "test", b"fine_labels", b"coarse_labels")
    meta = base / "meta"
    classes = _decode(load_pickle(meta)[b"fine_label_names"]) if meta.is_file() else tuple(str(i) for i in range(100))
    ds = ArrayDataset("cifar100", torch.from_numpy(x), _labels(y), torch.from_numpy(xt), _labels(yt),
                      classes, coarse_train=_labels(c), coarse_test=_labels(ct),
                      augment={"crop_padding": 4, "flip": True}, root=root)
    from ..noise import superclass_next_map

    ds.asymmetric_map = superclass_next_map(y, c, 100)
    return ds.check()
