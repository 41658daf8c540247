"""Label noise models (docs/data.md): ``apply_noise(labels, spec, num_classes=, seed=)``.

Every model is a pure function of (labels, spec, seed) through numpy's PCG64 generator: the same
call gives the same noisy labels in every process. ``spec`` strings:

==============================  ===========================================================
``symmetric:R``                 round(R·N) samples, chosen uniformly, get a label drawn
                                uniformly from ALL K classes, the true one included
                                (DivideMix / the authors' convention): flip rate R(K−1)/K.
``symmetric-exclusive:R``       round(R·N) samples get a label drawn uniformly from the
                                K−1 OTHER classes: flip rate R.
``asymmetric-cifar10:R``        round(R·N) samples pass through the CIFAR-10 map
                                truck→automobile, bird→airplane, deer→horse, cat↔dog
                                (9→1, 2→0, 4→7, 3↔5); other classes keep their label.
``asymmetric-cifar100:R``       round(R·N) samples move to the next fine class of their own
                                superclass (cyclically, in index order); needs coarse labels.
``asymmetric:R[:FILE]``         the same with a class map: FILE (JSON ``{"src": dst}`` or
                                CSV lines ``src,dst``), ``mapping=``, or the dataset's own.
``pairflip:R``                  each label moves to the next class (c→c+1 mod K) with
                                probability R (Co-teaching's pair flip).
``matrix:FILE``                 each label y is redrawn from row y of a K×K row-stochastic
                                matrix (``.npy`` or ``.csv``).
``instance:R``                  instance-dependent noise of Xia et al. (NeurIPS 2020): per
                                sample flip rate q_i ~ N(R, 0.1²) truncated to [0, 1],
                                direction softmax(x_i W_y) over the other classes; needs
                                ``features=``.
``cifar10n:TYPE[:FILE]``        CIFAR-10N human labels, TYPE in aggre, worse, random1..3.
``cifar100n:noisy[:FILE]``      CIFAR-100N human labels.
==============================  ===========================================================

The CIFAR-N FILE defaults to ``CIFAR-10_human.pt`` / ``CIFAR-100_human.pt`` in ``data_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .noise_files import CIFARN_TYPES, human, read_class_map, read_matrix

__all__ = ["NoisyLabels", "apply_noise", "NOISE_MODELS", "CIFAR10_ASYMMETRIC_MAP", "transition_matrix"]

CIFAR10_ASYMMETRIC_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass(frozen=True)
class NoisyLabels:
    """The outcome of a noise model.

    Attributes:
        labels: the noisy labels, int64 array (N,).
        is_noisy: boolean mask, True where the noisy label differs from the true one.
        transition: the realised K×K matrix, rows = true class, T[i, j] = share of class-i
            samples labelled j (a row of a class with no sample is all zero).
        rate: the realised flip rate, ``is_noisy.mean()``.
        spec: the spec string that produced them.
    """

    labels: np.ndarray
    is_noisy: np.ndarray
    transition: np.ndarray
    rate: float
    spec: str


def transition_matrix(true: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (true, noisy), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _rate(arg: str, spec: str) -> float:
    try:
        r = float(arg)
    except ValueError:
        raise ValueError(f"noise {spec!r}: rate {arg!r} is not a number; write e.g. symmetric:0.4") from None
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"noise {spec!r}: rate {r} is outside [0, 1]")
    return r


def _chosen(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """round(rate·n) distinct sample indices, uniformly chosen."""
    return rng.permutation(n)[: int(round(rate * n))]


def symmetric(labels, rate, k, rng, **_):
    out = labels.copy()
    idx = _chosen(len(labels), rate, rng)
    out[idx] = rng.integers(0, k, size=len(idx))
    return out


def symmetric_exclusive(labels, rate, k, rng, **_):
    if k < 2:
        raise ValueError("symmetric-exclusive noise needs at least 2 classes")
    out = labels.copy()
    idx = _chosen(len(labels), rate, rng)
    # an offset in 1..K-1 added mod K is uniform over the other classes
    out[idx] = (labels[idx] + rng.integers(1, k, size=len(idx))) % k
    return out


def _class_index(value, where: str, entry) -> int:
    """A class map's src or dst: an integer or its digits (JSON keys); not 1.5, None or a name."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{where}: entry {entry}: {value!r} is not a class index (an integer 0..K-1)")


def _map_array(mapping: Mapping[int, int], k: int, where: str) -> np.ndarray:
    table = np.arange(k)
    for src, dst in mapping.items():
        entry = f"{src!r}: {dst!r}"
        src, dst = _class_index(src, where, entry), _class_index(dst, where, entry)
        if not (0 <= src < k and 0 <= dst < k):
            raise ValueError(f"{where}: class map entry {src}->{dst} is outside [0, {k})")
        table[src] = dst
    if (table == np.arange(k)).all():
        raise ValueError(f"{where}: the map moves no class ({len(mapping)} entries); asymmetric noise would change "
                         f"no label: give src: dst pairs of different classes")
    return table


def _mapped(labels, rate, table, rng):
    out = labels.copy()
    idx = _chosen(len(labels), rate, rng)
    out[idx] = table[labels[idx]]
    return out


def asymmetric_cifar10(labels, rate, k, rng, **_):
    if k != 10:
        raise ValueError(f"asymmetric-cifar10 noise needs 10 classes, the data has {k}")
    return _mapped(labels, rate, _map_array(CIFAR10_ASYMMETRIC_MAP, 10, "asymmetric-cifar10"), rng)


def superclass_next_map(fine: np.ndarray, coarse: np.ndarray, k: int) -> dict[int, int]:
    """Each fine class -> the next fine class of its superclass (cyclic, in index order)."""
    owner = {}
    for f, c in zip(fine.tolist(), coarse.tolist()):
        if owner.setdefault(f, c) != c:
            raise ValueError(f"fine class {f} appears under two superclasses ({owner[f]} and {c})")
    mapping = {}
    for c in sorted(set(owner.values())):
        members = sorted(f for f, o in owner.items() if o == c)
        for i, f in enumerate(members):
            mapping[f] = members[(i + 1) % len(members)]
    return mapping


def asymmetric_cifar100(labels, rate, k, rng, *, coarse_labels=None, **_):
    if coarse_labels is None:
        raise ValueError(
            "asymmetric-cifar100 noise needs the superclass of every sample: pass "
            "coarse_labels= (the cifar100 dataset provides them)"
        )
    coarse = np.asarray(coarse_labels)
    if coarse.shape != labels.shape:
        raise ValueError(f"coarse_labels has shape {coarse.shape}, labels {labels.shape}")
    table = _map_array(superclass_next_map(labels, coarse, k), k, "asymmetric-cifar100")
    return _mapped(labels, rate, table, rng)


def asymmetric(labels, rate, k, rng, *, mapping=None, map_file=None, **_):
    if map_file is not None:
        mapping = read_class_map(map_file)
    if mapping is None:
        raise ValueError(
            "asymmetric noise needs a class map: this dataset has none of its own; give "
            "asymmetric:R:FILE (JSON or 'src,dst' lines) or mapping={src: dst}"
        )
    return _mapped(labels, rate, _map_array(mapping, k, f"class map {map_file}" if map_file else "asymmetric"), rng)


def pairflip(labels, rate, k, rng, **_):
    flip = rng.random(len(labels)) < rate
    return np.where(flip, (labels + 1) % k, labels)


def _draw_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical draw per row of a row-stochastic matrix."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((len(probs), 1)) * cdf[:, -1:]
    return np.minimum((u >= cdf).sum(axis=1), probs.shape[1] - 1)


def matrix(labels, rate, k, rng, *, matrix_file=None, **_):
    return _draw_rows(read_matrix(matrix_file, k)[labels], rng)


def _truncated_normal(mean, std, n, rng):
    out = np.empty(0)
    while len(out) < n:
        draw = rng.normal(mean, std, size=2 * n)
        out = np.concatenate([out, draw[(draw >= 0) & (draw <= 1)]])
    return out[:n]


def instance(labels, rate, k, rng, *, features=None, **_):
    """Xia et al., "Part-dependent Label Noise", NeurIPS 2020 (their instance-noise generator)."""
    if features is None:
        raise ValueError("instance noise depends on the inputs: pass features= (N × D array)")
    x = np.asarray(features, dtype=np.float64).reshape(len(labels), -1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    q = _truncated_normal(rate, 0.1, len(labels), rng)
    w = rng.standard_normal((k, x.shape[1], k))
    scores = np.einsum("nd,ndk->nk", x, w[labels])
    scores[np.arange(len(labels)), labels] = -np.inf
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = q[:, None] * scores / scores.sum(axis=1, keepdims=True)
    probs[np.arange(len(labels)), labels] = 1.0 - q
    return _draw_rows(probs, rng)


NoiseFn = Callable[..., np.ndarray]
NOISE_MODELS: dict[str, NoiseFn] = {
    "symmetric": symmetric,
    "symmetric-exclusive": symmetric_exclusive,
    "asymmetric-cifar10": asymmetric_cifar10,
    "asymmetric-cifar100": asymmetric_cifar100,
    "asymmetric": asymmetric,
    "pairflip": pairflip,
    "matrix": matrix,
    "instance": instance,
    "cifar10n": human,
    "cifar100n": human,
}


def _parse(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition(":")
    if name not in NOISE_MODELS:
        raise ValueError(f"unknown noise {spec!r}; valid noise models: {', '.join(NOISE_MODELS)} (or 'none')")
    if name in CIFARN_TYPES:
        kind, _, path = rest.partition(":")
        if kind not in CIFARN_TYPES[name]:
            raise ValueError(f"noise {spec!r}: type must be one of {', '.join(CIFARN_TYPES[name])}")
        return name, dict(rate=None, family=name, kind=kind, label_file=path or None)
    if name == "matrix":
        if not rest:
            raise ValueError("noise 'matrix' needs a file: matrix:FILE (.npy or .csv)")
        return name, dict(rate=None, matrix_file=rest)
    rate_str, _, path = rest.partition(":")
    if not rate_str:
        raise ValueError(f"noise {spec!r} needs a rate: {name}:R with R in [0, 1]")
    kw = dict(rate=_rate(rate_str, spec))
    if path:
        if name != "asymmetric":
            raise ValueError(f"noise {spec!r}: only asymmetric takes a file after the rate")
        kw["map_file"] = path
    return name, kw


def check_spec(spec: str) -> None:
    """Raise a ValueError naming the problem when ``spec`` is not a valid noise spec (its files,
    if any, are read later, with the data)."""
    if spec not in ("none", "clean"):
        _parse(spec)


def apply_noise(
    labels,
    spec: str,
    *,
    num_classes: int,
    seed: int = 0,
    coarse_labels=None,
    mapping: Mapping[int, int] | None = None,
    features=None,
    data_dir: str | Path | None = None,
) -> NoisyLabels:
    """Corrupt true labels by a named noise model; see the module docstring for the specs.

    Args:
        labels: true labels, integers in [0, num_classes).
        spec: e.g. ``"symmetric:0.4"``; ``"none"`` (or ``"symmetric:0"``) keeps them.
        num_classes: K.
        seed: the noise is a pure function of (labels, spec, seed).
        coarse_labels: superclass per sample, for ``asymmetric-cifar100``.
        mapping: class map for ``asymmetric:R`` (the CLI passes the dataset's own).
        features: per-sample inputs for ``instance:R``.
        data_dir: where to look for CIFAR-N files when the spec names none.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.flatnonzero((y < 0) | (y >= num_classes))[0])
        raise ValueError(f"label {y[bad]} at index {bad} is outside [0, {num_classes})")
    if spec in ("none", "clean"):
        noisy = y.copy()
    else:
        name, kw = _parse(spec)
        rate = kw.pop("rate")
        rng = np.random.Generator(np.random.PCG64(seed))
        noisy = NOISE_MODELS[name](
            y, rate, num_classes, rng, coarse_labels=coarse_labels,
            mapping=kw.pop("mapping", mapping), features=features, data_dir=data_dir, **kw,
        ).astype(np.int64)
    is_noisy = noisy != y
    return NoisyLabels(
        labels=noisy,
        is_noisy=is_noisy,
        transition=transition_matrix(y, noisy, num_classes),
        rate=float(is_noisy.mean()) if len(y) else 0.0,
        spec=spec,
    )
