"""MNIST-style IDX files (MNIST, Fashion-MNIST), plain or gzipped, as in-memory datasets."""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset, _labels

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
# Visually confusable pairs, used by `asymmetric:R` on Fashion-MNIST (docs/data.md):
# shirt -> T-shirt, pullover -> coat, coat -> pullover, sandal -> sneaker, sneaker -> ankle boot,
# ankle boot -> sandal, T-shirt -> shirt, dress -> coat; trouser and bag keep their label.
FASHION_ASYMMETRIC_MAP = {6: 0, 2: 4, 4: 2, 5: 7, 7: 9, 9: 5, 0: 6, 3: 4}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), plain or gzipped; errors name the file and the problem. Kept
    read-only in memory per file version (path, inode, size, mtime), so a grid of runs in one
    process unzips Fashion-MNIST once, not once a run."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    return _read_idx(path.resolve(), st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _read_idx(path: Path, inode: int, size: int, mtime_ns: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: unreadable ({err}); re-download the file") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(
            f"{path}: wrong magic number {data[:4].hex()} (expected 0x00000801 or 0x00000803 "
            "for uint8 labels/images); not an IDX file"
        )
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated header: {ndim} dimensions need {4 + 4 * ndim} bytes, "
                         f"the file has {len(data)}; re-download the file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if len(body) != expected:
        raise ValueError(f"{path}: truncated: header promises {expected} bytes of data, file has {len(body)}")
    body = body.reshape(dims)
    body.flags.writeable = False  # shared by every caller: they copy before changing it
    return body


def _find(root: Path, stem: str, name: str) -> Path:
    for cand in (root / stem, root / f"{stem}.gz"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{root}: neither {stem} nor {stem}.gz found; fetch {name} with `l2b download {name} {root}`")


def load_idx_dataset(name: str, root: Path, classes: tuple[str, ...]) -> ArrayDataset:
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: directory {root} not found; fetch it with `l2b download {name} {root}`")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(_find(root, f"{prefix}-images-idx3-ubyte", name))
        y = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte", name))
        if x.ndim != 3 or y.ndim != 1:
            raise ValueError(f"{root}: {prefix} images must be N×H×W and labels N, got {x.shape} and {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"{root}: {prefix} has {len(x)} images but {len(y)} labels")
        parts[split] = (torch.from_numpy(x.copy())[:, None], _labels(y))
    return ArrayDataset(name, *parts["train"], *parts["test"], classes, root=root).check()


def load_mnist(path: str | None) -> ArrayDataset:
    if not path:
        raise ValueError("mnist needs its directory: mnist:DIR (with train-images-idx3-ubyte[.gz] ...; `l2b download "
                         "mnist DIR` fetches it)")
    return load_idx_dataset("mnist", Path(path), tuple(str(c) for c in range(10)))


def load_fashion_mnist(path: str | None) -> ArrayDataset:
    root = Path(path) if path else FASHION_MNIST_DIR
    if not path and not root.is_dir():
        raise FileNotFoundError(
            f"fashion-mnist: {root} not found; install it (apt-get install dataset-fashion-mnist), or fetch it "
            "with `l2b download fashion-mnist DIR` and give fashion-mnist:DIR"
        )
    ds = load_idx_dataset("fashion-mnist", root, FASHION_CLASSES)
    ds.asymmetric_map = dict(FASHION_ASYMMETRIC_MAP)
    return ds
