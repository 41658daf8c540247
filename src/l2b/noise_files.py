"""Label noise read from files: a class map (``asymmetric:R:FILE``), a transition matrix
(``matrix:FILE``) and the CIFAR-N human labels (``cifar10n`` / ``cifar100n``); each bad file is a
one-line error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CIFARN_TYPES = {
    "cifar10n": {"aggre": "aggre_label", "worse": "worse_label", "random1": "random_label1",
                 "random2": "random_label2", "random3": "random_label3"},
    "cifar100n": {"noisy": "noisy_label"},
}
CIFARN_FILES = {"cifar10n": "CIFAR-10_human.pt", "cifar100n": "CIFAR-100_human.pt"}


def read_class_map(path: str | Path) -> dict[int, int]:
    """A class map from JSON (``{"3": 5, ...}``) or CSV/text lines ``src,dst``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class map {path}: file not found")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            return dict(json.loads(text).items())  # each entry is checked where the map is used
        except (ValueError, AttributeError) as err:
            raise ValueError(f"class map {path}: expected a JSON object {{\"src\": dst}} ({err})") from None
    mapping = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line:
            continue
        parts = [p for p in line.replace(",", " ").split() if p]
        try:
            src, dst = (int(p) for p in parts)
        except ValueError:
            raise ValueError(f"class map {path}, line {lineno}: expected 'src,dst', got {line!r}") from None
        mapping[src] = dst
    return mapping


def read_matrix(path: str | Path, k: int) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"noise matrix {path}: file not found")
    try:
        m = np.asarray(np.load(path) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",", ndmin=2),
                       dtype=np.float64)
    except (ValueError, TypeError, OSError, EOFError) as err:
        raise ValueError(f"noise matrix {path}: unreadable ({' '.join(str(err).split())}); write K rows of K "
                         f"comma-separated numbers") from None
    if m.shape != (k, k):
        raise ValueError(f"noise matrix {path}: shape {m.shape}, expected ({k}, {k}) for {k} classes")
    if not np.isfinite(m).all():
        raise ValueError(f"noise matrix {path}: NaN or inf entries ({int((~np.isfinite(m)).sum())})")
    if (m < 0).any():
        raise ValueError(f"noise matrix {path}: negative entries")
    bad = np.flatnonzero(np.abs(m.sum(axis=1) - 1.0) > 1e-6)
    if len(bad):
        raise ValueError(
            f"noise matrix {path}: row {bad[0]} sums to {m[bad[0]].sum():.6g}, not 1 "
            f"({len(bad)} bad rows); each row i must be P(noisy label | true class i)"
        )
    return m


def human(labels, rate, k, rng, *, family, kind, label_file=None, data_dir=None, **_):
    from .safe_pickle import load_torch_save_dict

    if label_file is None:
        if data_dir is None:
            raise ValueError(
                f"{family}:{kind} needs the CIFAR-N label file: give {family}:{kind}:FILE or put "
                f"{CIFARN_FILES[family]} in the dataset directory"
            )
        label_file = Path(data_dir) / CIFARN_FILES[family]
    d = load_torch_save_dict(label_file)
    key = CIFARN_TYPES[family][kind]
    if not isinstance(d, dict) or key not in d or "clean_label" not in d:
        raise ValueError(f"{label_file}: not a {family} label file (no {key!r} / 'clean_label')")
    noisy, clean = np.asarray(d[key], dtype=np.int64), np.asarray(d["clean_label"], dtype=np.int64)
    if len(noisy) != len(labels) or len(clean) != len(labels):
        raise ValueError(
            f"{label_file}: {len(noisy)} labels, but the dataset has {len(labels)} training "
            f"samples; CIFAR-N labels the full 50,000-image training set in its original order"
        )
    mismatch = np.flatnonzero(clean != labels)
    if len(mismatch):
        raise ValueError(
            f"{label_file}: its clean labels differ from the dataset's at {len(mismatch)} samples "
            f"(first: index {mismatch[0]}); the file does not belong to this dataset or order"
        )
    return noisy
