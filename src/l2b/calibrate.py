"""How many labels to flag, from the data: confident-learning thresholds (Northcutt et al., 2021),
the number of issues a clean set's confusion explains, and the checks every (labels, pred_probs)
input passes.

A fixed cut on the model's probability of the given label flags most of the data when the model is
unsure (short runs, hard classes). The cuts here adapt to how confident the model is, class by
class. The default, chosen by measurement (benchmarks/RESULTS.md, "Label issues: the calibrated
cut"), depends on what the run's clean set was to its model.

Where the clean set steered the training through a meta step that weights each training sample
(L2B, L2RW), or the model learned from the clean labels (MLC's mix mode, GLC, distill,
``--train-on-clean``): ``clean-confusion``. A meta step fits the clean samples without training on
them, so the model treats a clean sample of class t much as it treats a training sample whose true
class is t: the mean probabilities it gives the samples labelled g are then a mix of the clean
classes' mean probabilities, in the proportions of their true classes, and the part of that mix
not of class g is the share of wrong labels in g. Both estimates run high on such runs, each for
its own reason: the model is somewhat surer of the clean samples the meta step fitted than of the
correct training labels (the mix then credits the difference to wrong labels), and confident
learning counts the correct labels of classes the model is unsure of. The cut takes the smaller. A
model that trained on the clean samples is at least as sure of them as of its correct training
labels, so their count errs high the same way and the same rule holds.

Where the clean set is held out (CE, co-teaching, and MW-Net, whose meta step tunes one small
network that maps a loss to a weight and pulls the model towards its clean set little):
``checked-count``. Confident learning's count is right where the model tells the classes apart;
where it is unsure of whole classes, the count takes in their correct labels too. The held-out
clean set shows which: its labels are right, so the share of it that confident learning's
thresholds put in another class is the count's false alarms. Where that reaches
``FALSE_ALARM_LIMIT`` (15%), the smaller of the count and the clean set's mix is taken (the model is
less sure of held-out samples than of its training samples, so there the mix runs low, not high).
Without a clean set of every labelled class: ``count``.

- ``t_j``: the mean probability of class j over the samples labelled j (the per-class threshold);
- the confident joint ``C[i, j]``: samples labelled i whose probability of class j reaches ``t_j``
  (the most probable such class when several do);
- calibrated so that each row sums to the count of label i, its off-diagonal mass is the estimated
  number of label issues.

The cuts (``CUTS``): ``count`` flags that many samples, the most suspect first by the ranking
score; ``clean-confusion`` flags the number the clean set's confusion explains (or the count
where that is smaller), the same way; ``checked-count`` the count, or where it flags 15% or more of
the held-out clean samples, the smaller of the two, the same way;
``per-class`` flags, within each given class, its row's off-diagonal count, ranked by the margin of
the best other class over the given one; ``confident`` flags the samples whose confident class is
not the given one; ``clean-quantile`` those less probable than 90% of the clean samples' true
labels; ``threshold`` is a fixed cut on the score.
"""

from __future__ import annotations

import numpy as np

# the share of held-out clean samples that confident learning would flag, at and above which its count is
# judged inflated (measured: 0-0.115 where the count was right, 0.167-0.348 where it ran 1.27-1.97x)
FALSE_ALARM_LIMIT = 0.15
CUTS = {
    "count": "the estimated number of issues (confident learning), most suspect first",
    "clean-confusion": "the number of issues the clean set's confusion explains (each given class's mean "
                       "probabilities fitted as a mix of the clean classes'), or the count where that is smaller; "
                       "most suspect first",
    "checked-count": f"the estimated number of issues, or where confident learning would flag "
                     f"{FALSE_ALARM_LIMIT:.0%} or more of the held-out clean samples (their labels are right: false "
                     "alarms, so the model is unsure of whole classes), the number the clean set's confusion explains where smaller; most suspect first",
    "per-class": "per given class, its estimated number of issues, ranked by margin",
    "confident": "samples whose confident class (per-class thresholds) is not the given one",
    "clean-quantile": "labels less probable than the true label of all but 10% of held-out clean samples",
    "threshold": "score above 1 - threshold (a fixed cut)",
}
# by measurement (benchmarks/RESULTS.md, "Label issues: the calibrated cut"): clean-confusion where
# the clean set steered the training, checked-count where it is held out, else the estimated count
DEFAULT_CUT = "count"
STEERED_CUT = "clean-confusion"
HELD_OUT_CUT = "checked-count"
CLEAN_CUT = "clean-quantile"
CLEAN_CUTS = (STEERED_CUT, HELD_OUT_CUT, CLEAN_CUT)  # the cuts that read a clean set
CLEAN_QUANTILE = 0.1
# how far a row of probabilities may sum from 1: a softmax in bfloat16 (autocast) rounds each entry
# to 8 bits, and its rows sum to 1 within about 0.4%; logits and unnormalised scores sum far from it
ROW_SUM_TOLERANCE = 0.01
ROW_SUM_EXACT = 1e-3  # a float32 softmax's rows sum to 1 within this: they are taken exactly as given


def as_numpy(x) -> np.ndarray:
    """``x`` as a numpy array; a torch tensor as its values, wherever it lives and whatever its
    precision (on a GPU, requiring grad, bfloat16), so that a model's outputs are taken as given."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu()
        return (x.double() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def check_labels(labels, num_classes: int | None = None, name: str = "labels",
                 probs_name: str = "pred_probs") -> np.ndarray:
    """A 1-D array of integer class labels in [0, num_classes); one-line errors naming the first
    bad entry (a label of -1 would silently read the last class)."""
    y = as_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
            raise ValueError(f"{name}[{bad}] = {y[bad].item()!r} is not a class index; labels must be integers")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iub":
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        bad = int(np.argmin(y))
        raise ValueError(f"{name}[{bad}] = {y[bad]}: labels must be class indices 0..K-1, not negative")
    if num_classes is not None and len(y) and y.max() >= num_classes:
        bad = int(np.argmax(y))
        raise ValueError(f"{name}[{bad}] = {y[bad]} but {probs_name} has {num_classes} columns (classes 0.."
                         f"{num_classes - 1}); give probabilities for every class")
    return y


def check_pred_probs(pred_probs, n: int, name: str = "pred_probs", labels: str = "labels") -> np.ndarray:
    """An (n, K) array of probabilities: finite, non-negative, rows summing to 1 (logits or
    scores are refused with the fix: a softmax)."""
    p = as_numpy(pred_probs).astype(np.float64, copy=False)
    if p.ndim != 2 or len(p) != n:
        raise ValueError(f"{name} must be (n, classes) with n = len({labels}) = {n}, got shape {p.shape}")
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} row {int(np.flatnonzero(bad)[0])} holds NaN or inf ({int(bad.sum())} row(s)); "
                         f"score those samples again or drop them")
    if (p < 0).any():
        row = int(np.flatnonzero((p < 0).any(axis=1))[0])
        raise ValueError(f"{name} row {row} has negative entries: these look like logits, not probabilities; "
                         f"apply a softmax first (scipy.special.softmax(x, axis=1))")
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(f"{name} row {row} sums to {sums[row]:.4g}, not 1 ({int(off.sum())} row(s)): these are "
                         f"not probabilities; apply a softmax to logits (scipy.special.softmax(x, axis=1))")
    # a softmax taken in half precision sums to 1 only to its rounding: those rows are scaled to sum to 1
    loose = np.abs(sums - 1.0) > ROW_SUM_EXACT
    if loose.any():
        p = p.copy()  # not the caller's array
        p[loose] /= sums[loose, None]
    return p


def per_class_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``t_j``: the mean probability of class j over the samples labelled j (inf for a class no
    sample carries, so that no sample is confidently of it)."""
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=probs[np.arange(len(labels)), labels], minlength=k)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def confident_classes(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each sample's confident class: the most probable class whose probability reaches its
    threshold; -1 where none does."""
    above = probs >= per_class_thresholds(labels, probs)[None, :] - 1e-12
    masked = np.where(above, probs, -1.0)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def calibrated_joint(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The confident joint (rows: given label, columns: confident class), each row rescaled to
    the number of samples with that given label."""
    k = probs.shape[1]
    conf = confident_classes(labels, probs)
    ok = conf >= 0
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[ok], conf[ok]), 1.0)
    counts = np.bincount(labels, minlength=k).astype(float)
    rows = joint.sum(axis=1)
    return joint * np.divide(counts, rows, out=np.zeros(k), where=rows > 0)[:, None]


def estimated_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per given class, the estimated number of its samples whose label is wrong."""
    joint = calibrated_joint(labels, probs)
    return np.rint(joint.sum(axis=1) - np.diag(joint)).astype(np.int64)


def false_alarms(labels: np.ndarray, probs: np.ndarray, clean: tuple[np.ndarray, np.ndarray]) -> float:
    """The share of clean samples (true labels and the model's probabilities for them) whose
    confident class, by the per-class thresholds of the training samples, is another class than
    their label: how often confident learning would call a correct label wrong."""
    clean_y, clean_p = clean
    if not len(clean_y):
        return 0.0
    above = clean_p >= per_class_thresholds(labels, probs)[None, :] - 1e-12
    confident = np.where(above, clean_p, -1.0).argmax(axis=1)
    return float((above.any(axis=1) & (confident != clean_y)).mean())


def clean_reference(clean_labels, clean_probs) -> tuple[np.ndarray, np.ndarray]:
    """Held-out clean samples' TRUE labels and a model's probabilities for them (checked)."""
    p = as_numpy(clean_probs)
    y = check_labels(clean_labels, p.shape[1] if p.ndim == 2 else None, "clean_labels", "clean_pred_probs")
    p = check_pred_probs(p, len(y), "clean_pred_probs", "clean_labels")
    if not len(y):
        raise ValueError("clean_labels is empty: give the held-out clean samples, or leave both clean_* out")
    return y, p


def uncovered_classes(labels: np.ndarray, clean_labels: np.ndarray) -> np.ndarray:
    """The labelled classes of which the clean set has no sample."""
    return np.setdiff1d(np.unique(labels), clean_labels)


def clean_confusion_issues(labels: np.ndarray, probs: np.ndarray, clean: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per given class g, the estimated number of its samples whose label is wrong, from a clean
    set (its true labels and the model's probabilities for it): the mean probabilities the model
    gives the samples labelled g, fitted by non-negative least squares as a mix of the mean
    probabilities it gives each clean class; the weight off class g is the share of wrong labels.
    Every given class needs clean samples of its own (ValueError naming the first that has none)."""
    from scipy.optimize import nnls

    clean_y, clean_p = clean
    k = probs.shape[1]
    counts, clean_counts = np.bincount(labels, minlength=k), np.bincount(clean_y, minlength=k)
    missing = uncovered_classes(labels, clean_y)
    if len(missing):
        raise ValueError(f"cut 'clean-confusion' needs clean samples of every labelled class; class {missing[0]} has "
                         f"none ({len(missing)} class(es)): add some to the clean set, or use cut 'count'")
    by_true = np.zeros((k, k))
    np.add.at(by_true, clean_y, clean_p)
    present = np.flatnonzero(clean_counts)
    by_true = by_true[present] / clean_counts[present, None]
    given_mean = np.zeros((k, k))
    np.add.at(given_mean, labels, probs)
    issues = np.zeros(k)
    for g in np.flatnonzero(counts):
        mix, _ = nnls(by_true.T, given_mean[g] / counts[g])
        total = mix.sum()
        issues[g] = counts[g] * (1.0 - mix[np.searchsorted(present, g)] / total) if total > 0 else 0.0
    return issues


def flag(cut: str, labels: np.ndarray, probs: np.ndarray | None, score: np.ndarray, threshold: float,
         clean: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A boolean mask of the flagged samples under ``cut`` (a key of CUTS); ``clean``: clean
    samples' true labels and the model's probabilities for them (``clean-quantile``,
    ``clean-confusion``)."""
    n = len(labels)
    if cut == "threshold":
        return score > 1.0 - threshold
    if cut in CLEAN_CUTS and (clean is None or probs is None):
        raise ValueError(f"cut {cut!r} needs pred_probs and held-out clean samples' probabilities "
                         f"(clean_labels=, clean_pred_probs=)")
    if cut == CLEAN_CUT:
        clean_y, clean_p = clean
        # a conformal test: a correct label held out would fall below this in at most 10% of cases
        return probs[np.arange(n), labels] < np.quantile(clean_p[np.arange(len(clean_y)), clean_y], CLEAN_QUANTILE)
    if probs is None:
        raise ValueError(f"cut {cut!r} needs pred_probs (a model's probabilities); give them, or cut='threshold'")
    mask = np.zeros(n, dtype=bool)
    if cut in ("count", STEERED_CUT, HELD_OUT_CUT):
        m = int(estimated_issues(labels, probs).sum())
        # both run high on a steered run; on a held-out one the count does where it has many false alarms
        # (see the module's docstring): then the smaller
        if cut == STEERED_CUT or (cut == HELD_OUT_CUT and false_alarms(labels, probs, clean) >= FALSE_ALARM_LIMIT):
            m = min(m, int(round(clean_confusion_issues(labels, probs, clean).sum())))
        mask[np.argsort(-score, kind="stable")[:m]] = True
    elif cut == "per-class":
        other = probs.copy()
        other[np.arange(n), labels] = -np.inf
        margin = other.max(axis=1) - probs[np.arange(n), labels]
        for c, m in enumerate(estimated_issues(labels, probs)):
            members = np.flatnonzero(labels == c)
            mask[members[np.argsort(-margin[members], kind="stable")[:m]]] = True
    elif cut == "confident":
        conf = confident_classes(labels, probs)
        mask = (conf >= 0) & (conf != labels)
    else:
        raise ValueError(f"unknown cut {cut!r}; choose one of {', '.join(CUTS)}")
    return mask
