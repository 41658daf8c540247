"""Loading pickles (CIFAR batches, CIFAR-N label files) without letting them run code.

A pickle can call any importable function while it loads. The files we read hold only plain
containers, strings, bytes, numbers and numpy arrays, so the unpickler below resolves exactly the
globals that numpy arrays need and refuses every other one.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell a bytes object
}


class UnsafePickleError(ValueError):
    """The pickle asked for a global that a plain data file never needs."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: the file is not plain data "
                "(a malicious or foreign pickle?)"
            )
        if module == "_codecs":
            import codecs

            return codecs.encode
        import numpy as np

        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a pickle with persistent ids (tensor storages)")


def load_pickle(path: str | Path, encoding: str = "bytes"):
    """Unpickle a plain-data file; raise a clear error if it is missing or not plain data."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    return loads(data, str(path), encoding)


def loads(data: bytes, where: str, encoding: str = "bytes"):
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{where}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{where}: not a readable pickle ({err}); is the file truncated?") from None


def load_torch_save_dict(path: str | Path):
    """Read a ``torch.save`` file of numpy arrays (zip archive with a data.pkl) safely."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                raise ValueError(f"{path}: no data.pkl inside; not a torch.save file")
            return loads(zf.read(name), str(path), encoding="latin1")
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a torch.save zip archive (truncated or another format?)") from None
