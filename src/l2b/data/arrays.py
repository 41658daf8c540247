"""Small-image datasets that live in memory as uint8 tensors: digits, CIFAR, npz (MNIST-style IDX
files: ``idx``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
import zipfile

import numpy as np
import torch

from ..safe_pickle import load_pickle
from .copies import array_copies, copies_message

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


def nchw(x: np.ndarray, path: Path, key: str) -> torch.Tensor:
    """Images stored N×H×W or N×H×W×C (C in 1, 3, 4) as an N×C×H×W uint8 tensor; anything else is
    a one-line error that names the array and a conversion to make that loses nothing."""
    if x.ndim == 2 and x.dtype.kind in "fiub":
        raise ValueError(f"{path}: {key} has shape {x.shape}: a row of {x.shape[1]} values per sample, not images "
                         f"(N×H×W or N×H×W×C; one image alone: {key}[None]). l2b's data are images; for a table of "
                         f"features, train your own model with the drop-in step l2b.L2B and rank its labels with "
                         f"l2b.find_label_issues (docs/data.md, 'A table of features, not images')")
    if x.dtype.kind in "iu" and x.size and 0 <= int(x.min()) and int(x.max()) <= 255:
        x = x.astype(np.uint8)  # integers of 0-255 in a wider type (np.array of Python ints): nothing lost
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: {key} has dtype {x.dtype}{_to_uint8(x, key)}")
    if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[3] not in (1, 3, 4):
        raise ValueError(f"{path}: {key} has shape {x.shape}, which looks like N×C×H×W (PyTorch's order); store "
                         f"N×H×W×C: {key} = {key}.transpose(0, 2, 3, 1)")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # N×H×W×C -> N×C×H×W
    else:
        raise ValueError(f"{path}: {key} has shape {x.shape}; expected N×H×W or N×H×W×C with C = 1, 3 or 4")
    return torch.from_numpy(np.ascontiguousarray(x))


def _to_uint8(x: np.ndarray, key: str) -> str:
    """The rest of the message for images not stored as uint8: what they hold, and a conversion to
    uint8 that keeps them (never a clip that flattens what lies outside 0-255, nor a cast that wraps)."""
    store = "store images as uint8 (0-255)"
    if x.dtype.kind == "b":
        return f"; {store}: {key} = {key}.astype(np.uint8) * 255"
    if x.dtype.kind not in "iuf":
        return f"; {store}"
    bad = ~np.isfinite(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    if bad.any():
        first = ", ".join(str(int(i)) for i in np.argwhere(bad)[0])
        return (f" and holds {int(bad.sum())} NaN or inf value(s), the first at {key}[{first}]: mend or drop those "
                f"images, then {store}")
    low, top = (x.min().item(), x.max().item()) if x.size else (0, 0)
    head = f" (values {low:g}..{top:g}); {store}"
    if x.dtype.kind == "f" and low >= 0 and top <= 1:
        return f"{head}: {key} = ({key} * 255).round().astype(np.uint8)"
    if x.dtype.kind == "f" and low >= 0 and top <= 255:
        return f"{head}: {key} = {key}.round().astype(np.uint8)"
    # 12- or 16-bit intensities, CT numbers, standardised images: one linear map, the same for every split
    # (l2b then normalises by the training images' own mean and std)
    shift = f"({key} - ({low:g}))" if low < 0 else key
    span = top - min(low, 0)
    return (f"{head}, by one linear map for every split (the widest range over them; this is {key}'s), e.g. "
            f"{key} = ({shift} * (255 / {span:g})).round().astype(np.uint8)")


def _array(z, p: Path, key: str) -> np.ndarray:
    """One array of an npz, with a one-line error for object arrays and unreadable members."""
    try:
        return z[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{p}: {key} is an object array (e.g. a list of images of different sizes, or "
                             f"strings); store a numeric array (uint8 images N×H×W(×C), integer labels)") from None
        raise ValueError(f"{p}: {key} cannot be read ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{p}: {key} is truncated or corrupted ({type(err).__name__}); write the file again "
                         f"with np.savez") from None


def load_npz(path: str | None) -> ArrayDataset:
    """Generic arrays: x_train, y_train [, x_test, y_test] [, x_val, y_val] [, classes]; without
    x_test/y_test the dataset has no test set (nothing held out to measure accuracy by)."""
    if not path:
        raise ValueError("npz needs a file: npz:FILE")
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p}: a directory; npz:FILE takes one .npz file (a folder of class folders is folder:DIR)")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: file not found")
    try:
        z = np.load(p, allow_pickle=False)
        files = z.files
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{p}: not a readable .npz (truncated or not written by np.savez: "
                         f"{type(err).__name__}); write it again with np.savez") from None
    missing = [k for k in ("x_train", "y_train") if k not in files]
    if missing:
        raise ValueError(f"{p}: missing arrays {missing}; an npz dataset needs x_train, y_train (and x_test, y_test "
                         f"for a test set; x_val, y_val for a verified clean set)")
    for split in ("val", "test"):
        if (f"x_{split}" in files) != (f"y_{split}" in files):
            raise ValueError(f"{p}: give both x_{split} and y_{split}, or neither")
    keys = [k for k in ("y_train", "y_test", "y_val") if k in files]
    labels = {k: _array(z, p, k) for k in keys}
    named = None
    if any(y.dtype.kind in "US" for y in labels.values()):  # class names: numbered as folder and csv labels are
        names = tuple(str(c) for c in _array(z, p, "classes")) if "classes" in files else None
        labels, named = _numbered(labels, p, names)
    for k, y in labels.items():
        _check_label_array(y, p, k)
    images = {k: nchw(_array(z, p, k), p, k) for k in ("x_train", "x_test", "x_val") if k in files}
    for k in images:
        if len(images[k]) == 0:
            raise ValueError(f"{p}: {k} is empty" + ("; an npz dataset needs training images" if k == "x_train" else
                                                      f" (leave x_{k[2:]}/y_{k[2:]} out when there is no "
                                                      f"{'clean' if k == 'x_val' else 'test'} set)"))
    shape = tuple(images["x_train"].shape[1:])
    for k, x in images.items():
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"{p}: {k} images are {_describe(x)} but x_train's are {_describe(images['x_train'])}; "
                             f"every split needs the same size and channels")
    if named is not None:
        classes = named
    elif "classes" in files:
        classes = tuple(str(c) for c in _array(z, p, "classes"))
        for k, y in labels.items():
            if len(y) and int(y.max()) >= len(classes):
                raise ValueError(f"{p}: {k} holds label {int(y.max())} (at index {int(np.argmax(y))}) but 'classes' names "
                                 f"{len(classes)} class(es): give one name per class, in label order 0..K-1")
    else:
        used = np.unique(np.concatenate([y for y in labels.values() if len(y)]))
        k = int(used.max()) + 1
        if len(used) < k and k > 2 * len(used):  # e.g. labels 0..9 and one 99: not 100 classes
            raise ValueError(f"{p}: the labels are {_few(used)}: {len(used)} distinct values, but the largest, "
                             f"{int(used.max())}, would make {k} classes. Number the classes 0..K-1 "
                             f"(np.unique(y, return_inverse=True)) or give their names as 'classes'")
        classes = tuple(str(c) for c in range(k))
    has_val = "x_val" in files
    for split in ("test", "val"):
        if f"x_{split}" in images:
            other = images[f"x_{split}"].numpy()
            pairs = [(f"x_{split}[{j}]", f"x_train[{i}]") for j, i in array_copies(images["x_train"].numpy(), other)]
            text = copies_message(split, len(other), pairs)
            if text:
                warnings.warn(f"{p}: {text}", stacklevel=3)
    if "x_test" not in images:  # no test set: empty splits of the training images' shape
        images["x_test"], labels["y_test"] = images["x_train"][:0], np.zeros(0, np.int64)
    return ArrayDataset(
        p.stem, images["x_train"], _labels(labels["y_train"]), images["x_test"], _labels(labels["y_test"]), classes,
        x_val=images["x_val"] if has_val else None,
        y_val=_labels(labels["y_val"]) if has_val else None, root=p.parent,
    ).check()


def label_order(names) -> list[str]:
    """Class names in label order: numerically where every name is a whole number ("2" before
    "10"), else alphabetically, as folder, csv and npz labels are numbered."""
    names = set(names)
    numeric = all(n.lstrip("-").isdigit() for n in names)
    return sorted(names, key=(lambda t: (int(t), t)) if numeric else str)


def warn_twin_classes(names, where) -> None:
    """Say so where two class names differ only in case or surrounding spaces ("Cat", "cat"): a
    labelling tool's export can write one class both ways, and each way is then a class of its own."""
    seen: dict[str, str] = {}
    for name in names:
        twin = seen.setdefault(str(name).strip().casefold(), str(name))
        if twin != str(name):
            from ..console import warn

            warn(f"{where}: class names {twin!r} and {str(name)!r} differ only in case or spaces, so they are two "
                 f"classes; if they are one, write them alike")
            return


def _numbered(labels: dict[str, np.ndarray], p: Path, classes: tuple[str, ...] | None):
    """An npz's labels given as class names, as integer labels and the class names: in the
    order of its ``classes`` where it has one, else numerically or alphabetically
    (``label_order``). Every split names its labels the same way; an empty name, or one that
    ``classes`` lacks, is refused naming the array and index."""
    text, first = {}, next(k for k, y in labels.items() if y.dtype.kind in "US")
    for k, y in labels.items():
        if y.dtype.kind not in "US":
            raise ValueError(f"{p}: {k} holds numbers (dtype {y.dtype}) where {first} holds class names; give every "
                             f"split's labels the same way")
        if y.ndim != 1:
            raise ValueError(f"{p}: {k} has shape {y.shape}; store one class name per sample")
        text[k] = np.char.decode(y, "utf-8") if y.dtype.kind == "S" else y
        empty = np.flatnonzero(np.char.str_len(text[k]) == 0)
        if len(empty):
            raise ValueError(f"{p}: {k}[{int(empty[0])}] is an empty class name; give every sample its class")
    order = list(classes) if classes is not None else label_order(np.concatenate(list(text.values())).tolist())
    if classes is None:
        warn_twin_classes(order, p)
    index = {name: i for i, name in enumerate(order)}
    numbered = {}
    for k, y in text.items():
        unknown = [i for i, name in enumerate(y.tolist()) if name not in index]
        if unknown:
            raise ValueError(f"{p}: {k}[{unknown[0]}] is {str(y[unknown[0]])!r}, which 'classes' does not name (it names "
                             f"{', '.join(order[:10])}{', ...' if len(order) > 10 else ''}); add it to 'classes' or "
                             f"correct the label")
        numbered[k] = np.array([index[name] for name in y.tolist()], dtype=np.int64)
    return numbered, tuple(order)


def _check_label_array(y: np.ndarray, p: Path, key: str) -> None:
    """One integer label per sample; the fix named for class names and one-hot rows."""
    if y.ndim != 1:
        raise ValueError(f"{p}: {key} has shape {y.shape}; store one integer label per sample"
                         + (f" ({key} = {key}.argmax(axis=1) for one-hot rows)" if y.ndim == 2 else ""))
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{p}: {key} must hold integer labels, got dtype {y.dtype}; store them as integers 0..K-1 "
                         f"({key}.astype(np.int64) if they are whole numbers)")


def _describe(x: torch.Tensor) -> str:
    c, h, w = x.shape[1:]
    return f"{h}×{w} with {c} channel{'s' if c > 1 else ''}"


def _few(values: np.ndarray) -> str:
    v = [int(x) for x in values]
    return ", ".join(map(str, v)) if len(v) <= 12 else ", ".join(map(str, v[:10])) + f", ..., {v[-1]}"
