"""Your own arrays: an npz of uint8 images and labels (integers or class names), with optional
test and clean sets, read into an :class:`~l2b.data.arrays.ArrayDataset`; and ``nchw``, the one
reader of images given as arrays (training, and new inputs to a trained model)."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset, _labels
from .class_names import label_order, warn_twin_classes
from .copies import array_copies, copies_message


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
