"""Test and clean images that are byte-for-byte copies of training images: a test image the model
trained on is not held out (test accuracy counts what it memorised), and a clean image that is
also a training sample is a label the user verified twice, perhaps differently. Both are easy to
make by hand (copying the verified images into val/ and leaving them in train/), and both go
unnoticed unless looked for. Files are compared by size first, and hashed only where sizes meet.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

WHY = {"test": "they are not held out, so test accuracy counts images the model trained on",
       "val": "a clean sample that is also a training sample is one label given twice (if you corrected it in the "
              "clean set, the training copy's label is the one to fix)"}


def _digest(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return hashlib.blake2b(fh.read(), digest_size=16).digest()


def file_copies(train: list[Path], other: list[Path]) -> list[tuple[Path, Path]]:
    """(image of ``other``, the training image it copies) for every file of ``other`` whose bytes
    equal a training file's."""
    by_size: dict[int, list[Path]] = {}
    for f in train:
        by_size.setdefault(os.path.getsize(f), []).append(f)
    digests: dict[Path, bytes] = {}
    pairs = []
    for g in other:
        same_size = by_size.get(os.path.getsize(g), [])
        if not same_size:
            continue
        d = _digest(g)
        for f in same_size:
            if f not in digests:
                digests[f] = _digest(f)
            if digests[f] == d:
                pairs.append((g, f))
                break
    return pairs


def array_copies(train: np.ndarray, other: np.ndarray) -> list[tuple[int, int]]:
    """(position in ``other``, position in ``train``) for every image of ``other`` equal to a
    training image, pixel for pixel."""
    def key(x: np.ndarray) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(x).tobytes(), digest_size=16).digest()

    seen: dict[bytes, int] = {}
    for i, x in enumerate(train):
        seen.setdefault(key(x), i)
    return [(j, seen[k]) for j, x in enumerate(other) if (k := key(x)) in seen]


def copies_message(split: str, total: int, pairs: list) -> str | None:
    """One line for the copies a ``split`` (test or val) holds, naming the first pair."""
    if not pairs:
        return None
    first, copied = pairs[0]
    what = "clean" if split == "val" else split
    return (f"{len(pairs)} of the {total} {what} images are copies of training images (e.g. {first} = {copied}): "
            f"{WHY[split]}; keep each image in one split")
