"""When a model has memorised its training labels, wrong ones included: read from how often it
agrees with them (``fit``) against how often it is right on a held-out clean set (``held``). The
trainer keeps the last model from before that began (early_model.pt); ``l2b label-issues`` scores
with it when the final one memorised (benchmarks/RESULTS.md, "Label issues: the calibrated cut")."""

from __future__ import annotations

import math
from collections.abc import Iterable

MEMORISED_GAP = 0.10  # agreement with the training labels beyond held-out clean accuracy: memorised
EARLY_SLACK = 0.05  # how far above its lowest the gap fit - held may be before memorising, not noise


def memorised(model: tuple[float, float], earlier: tuple[float, float] | None = None) -> bool:
    """Whether a model (its (fit, held) agreement, fractions) has memorised its training labels,
    wrong ones included: it agrees with them ``MEMORISED_GAP`` more often than it is right on the
    held-out clean set, or (given an ``earlier`` model of the same run) its agreement with them has
    risen that much more than its held-out accuracy since. Its probability of the given label then
    finds few of the label issues."""
    fit, held = model
    if fit - held >= MEMORISED_GAP:
        return True
    return earlier is not None and (fit - earlier[0]) - (held - earlier[1]) >= MEMORISED_GAP


def before_memorising(gap: float, lowest: float) -> bool:
    """Whether an epoch whose gap (fit - held, fractions) is ``gap`` comes before memorising, given
    the ``lowest`` gap of the epochs up to and including it. While a model learns the patterns
    its correct labels share, it agrees with its training labels about as much less than it is
    right on clean samples as the wrong labels make it; once it fits the wrong labels one by one,
    that gap rises. ``EARLY_SLACK`` allows for the clean accuracy's sampling noise (a clean set of
    200 moves it by about 3 points)."""
    return gap <= lowest + EARLY_SLACK


def fit_gaps(history: list[dict]) -> list[float | None]:
    """Each epoch's gap fit - held (fractions) from a run's history (its ``train_fit`` and
    ``val_acc``, in %); None for an epoch that did not measure its fit."""
    return [None if row.get("train_fit") is None else (row["train_fit"] - row["val_acc"]) / 100.0 for row in history]


def early_epoch(gaps: Iterable[float | None]) -> int:
    """The last epoch (0-based) that came before memorising (:func:`before_memorising`, each
    judged on the epochs up to it, as the trainer judges them while it trains): the epoch of
    early_model.pt; -1 when no epoch has a gap (no held-out clean set)."""
    lowest, last = math.inf, -1
    for epoch, gap in enumerate(gaps):
        if gap is None or math.isnan(gap):
            continue
        lowest = min(lowest, gap)
        if before_memorising(gap, lowest):
            last = epoch
    return last
