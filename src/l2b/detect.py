"""What the learned weights say about the labels: noise-detection metrics and label issues.

Every training sample gets a suspicion score for its given label (``SCORES``): by default 1 − the
final model's probability of it (``model``, the best ranking measured in
benchmarks/label_issues.py); from a meta method's weights, 1 − ``alpha / (alpha + beta)`` of the
last epoch or the mean over the kept epochs (0 trust when both are 0: the meta-gradient wanted
neither). How many are flagged comes from ``l2b.calibrate``; the suggested label is the model's
most probable other class, or the pseudo-label chosen most often.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .calibrate import (CUTS, DEFAULT_CUT, HELD_OUT_CUT, STEERED_CUT, as_numpy, check_labels, check_pred_probs,
                        clean_reference, estimated_issues, false_alarms, flag, uncovered_classes)

# A fixed cut (cut="threshold"): a sample is flagged when its label trust is below this (beta outweighs alpha).
DEFAULT_THRESHOLD = 0.5


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney U, ties averaged),
    vectorised: O(n log n) in numpy."""
    scores, positive = as_numpy(scores).astype(np.float64), as_numpy(positive).astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first element
    ranks = (starts + (counts + 1) / 2.0)[inverse]  # tied values share their average 1-based rank
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_trust(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    total = alpha + beta
    return np.divide(alpha, total, out=np.zeros_like(alpha, dtype=np.float64), where=total > 0)


def flag_metrics(flagged: np.ndarray, is_noisy: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of a boolean mask of flagged samples against the corrupted ones."""
    tp = int((flagged & is_noisy).sum())
    precision, recall = tp / max(int(flagged.sum()), 1), tp / max(int(is_noisy.sum()), 1)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / max(precision + recall, 1e-12),
            "flagged": int(flagged.sum()), "corrupted": int(is_noisy.sum())}


def detection_metrics(alpha, beta, is_noisy, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """How well the weights separate corrupted from clean samples.

    ``auc_trust``: ROC-AUC of 1 - alpha/(alpha+beta) for "corrupted"; ``auc_alpha``: of -alpha;
    ``precision`` / ``recall`` of flagging trust < ``threshold``.
    """
    alpha, beta, is_noisy = (as_numpy(v).astype(t) for v, t in ((alpha, float), (beta, float), (is_noisy, bool)))
    trust = label_trust(alpha, beta)
    return {"auc_trust": roc_auc(1.0 - trust, is_noisy), "auc_alpha": roc_auc(-alpha, is_noisy),
            **flag_metrics(trust < threshold, is_noisy), "threshold": threshold}


# How a label's suspicion is scored (``l2b label-issues --score``); "auto" picks by what is given.
SCORES = {
    "trust": "1 - alpha/(alpha+beta) of the last epoch",
    "trust-mean": "1 - the mean over the kept epochs of alpha/(alpha+beta) (epochs where the sample was weighted)",
    "weights-mean": "1 - mean alpha / (mean alpha + mean beta) over the kept epochs",
    "model": "1 - the model's probability of the given label",
    "combined": "the mean of trust-mean and model",
}


@dataclass
class LabelIssues:
    """Every sample's suspicion and suggested label, and the flagged ones ranked.

    ``indices``: positions of the flagged samples (score > 1 - threshold), most suspect first
    (ties broken by the secondary score: lower mean alpha, or lower model probability);
    ``score``: (n,) suspicion in [0, 1]; ``suggested``: (n,) a label other than the given one;
    ``confidence``: (n,) the model's probability of ``suggested`` (model scores), or the share of
    kept epochs whose pseudo-label was ``suggested`` (weight scores); ``source``: the score used (a
    key of ``SCORES``); ``agreement``: (n,) the share of kept epochs whose pseudo-label was
    ``suggested`` (None without pseudo-labels)."""

    indices: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    confidence: np.ndarray
    source: str
    agreement: np.ndarray | None = None
    cut: str = "threshold"  # how many were flagged (a key of l2b.calibrate.CUTS)
    estimated: int | None = None  # the estimated number of label issues (with probabilities)
    false_alarms: float | None = None  # cut checked-count: the share of clean samples confident learning would flag


def _as_history(values, name: str) -> np.ndarray | None:
    if values is None:
        return None
    v = as_numpy(values)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2:
        raise ValueError(f"{name} must be (n,) or (epochs, n), got shape {v.shape}")
    return v


def rank_label_issues(labels, alpha=None, beta=None, *, pseudo_labels=None, seen=None, pred_probs=None,
                      score: str = "auto", threshold: float | None = None, cut: str = "auto",
                      num_classes: int | None = None, clean_labels=None, clean_pred_probs=None,
                      clean_steered: bool = False) -> LabelIssues:
    """Label issues from a meta method's weights and/or a model's predicted probabilities.

    ``alpha``, ``beta``, ``pseudo_labels`` and ``seen`` are (n,) for one epoch or (epochs, n) for
    the last epochs (weights.npz's ``*_history``); ``seen`` marks the epochs where a sample was
    weighted (default: all). ``pred_probs`` is (n, classes) as cleanlab takes it. ``score``:
    a key of ``SCORES`` or "auto" (``model`` with ``pred_probs``, else ``trust``). ``cut``: how
    many to flag, a key of ``l2b.calibrate.CUTS`` or "auto": with ``clean_labels`` and
    ``clean_pred_probs`` that steered the training (``clean_steered``: a meta step weighted each
    training sample on them, as L2B's and L2RW's do; or the model learned from them: the count they
    explain then errs high too, and confident learning's caps it) and cover every labelled class,
    the number of issues their confusion explains or confident learning's, the smaller
    (``clean-confusion``); with held-out ones (``clean_steered=False``) that cover every class,
    confident learning's count, checked against them (``checked-count``: where it would flag 15% or
    more of them, the smaller of the two); else the number confident learning estimates (``count``)
    with ``pred_probs``; a fixed ``threshold`` when one is given or without them."""
    probs = None if pred_probs is None else as_numpy(pred_probs)
    labels = check_labels(labels, None if probs is None else probs.shape[1] if probs.ndim == 2 else None)
    a, b = _as_history(alpha, "alpha"), _as_history(beta, "beta")
    if (a is None) != (b is None):
        raise ValueError("give alpha and beta together")
    if a is not None and (a.shape != b.shape or a.shape[1] != len(labels)):
        raise ValueError(f"alpha and beta must have the same shape, n = len(labels) = {len(labels)} columns; "
                         f"got {a.shape} and {b.shape}")
    if a is not None:
        for name, v in (("alpha", a), ("beta", b)):
            bad = ~np.isfinite(v.astype(np.float64))
            if bad.any():
                e, i = (int(j[0]) for j in np.nonzero(bad))
                raise ValueError(f"{name} holds NaN or inf (epoch row {e}, sample {i}; {int(bad.sum())} in all): the "
                                 f"weights of a diverged run rank nothing; score with pred_probs instead")
    if probs is not None:
        probs = check_pred_probs(probs, len(labels))
    _check_companions(labels, a, seen, pseudo_labels, num_classes or (probs.shape[1] if probs is not None else None))
    if (clean_labels is None) != (clean_pred_probs is None):
        raise ValueError("give clean_labels and clean_pred_probs together")
    reference = None if clean_labels is None else clean_reference(clean_labels, clean_pred_probs)
    if reference is not None and probs is not None and reference[1].shape[1] != probs.shape[1]:
        raise ValueError(f"clean_pred_probs has {reference[1].shape[1]} columns and pred_probs {probs.shape[1]}: "
                         f"give both from the same model, a column per class")
    if cut == "auto":
        covered = reference is not None and not len(uncovered_classes(labels, reference[0]))
        cut = ("threshold" if threshold is not None or probs is None else
               STEERED_CUT if covered and clean_steered else HELD_OUT_CUT if covered else DEFAULT_CUT)
    if cut not in CUTS:
        raise ValueError(f"unknown cut {cut!r}; choose auto or one of {', '.join(CUTS)}")
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    if score == "auto":  # by measurement (benchmarks/label_issues.py): the model's probability ranks
        # corrupted labels far better than the weights; of the weight scores, the last epoch's trust
        score = "model" if probs is not None else "trust"
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose auto or one of {', '.join(SCORES)}")
    if score != "model" and a is None:
        raise ValueError(f"score {score!r} needs the weights (alpha, beta); give them, or score='model'")
    if score in ("model", "combined") and probs is None:
        raise ValueError(f"score {score!r} needs pred_probs")
    n = len(labels)
    k = num_classes or int(max(labels.max(initial=0), probs.shape[1] - 1 if probs is not None else 0,
                               as_numpy(pseudo_labels).max(initial=0) if pseudo_labels is not None else 0)) + 1
    seen_h = np.ones_like(a, dtype=bool) if a is not None and seen is None else _as_history(seen, "seen")
    p_given = None if probs is None else probs[np.arange(n), labels]
    if a is not None:
        a, b = a.astype(np.float64), b.astype(np.float64)
        epochs = np.maximum(seen_h.sum(axis=0), 1)
        mean_a, mean_b = (a * seen_h).sum(axis=0) / epochs, (b * seen_h).sum(axis=0) / epochs
        values = {"trust": 1.0 - label_trust(a[-1], b[-1]),
                  "trust-mean": 1.0 - (label_trust(a, b) * seen_h).sum(axis=0) / epochs,
                  "weights-mean": 1.0 - label_trust(mean_a, mean_b)}
    else:
        values, mean_a = {}, None
    if p_given is not None:
        values["model"] = 1.0 - p_given
        if a is not None:
            values["combined"] = 0.5 * (values["trust-mean"] + values["model"])
    main = values[score]
    # ties (e.g. every sample whose alpha is 0 scores 1) are broken by a second suspicion: a lower
    # mean alpha, or for the model score the weights' mean distrust when there are weights
    secondary = -mean_a if score != "model" else values.get("trust-mean", np.zeros(n))
    ranked = np.lexsort((-secondary, -main))  # most suspect first
    rank = np.empty(n, dtype=np.int64)
    rank[ranked] = np.arange(n)
    # the cuts that flag the top m take the ranking (ties broken as above); only the fixed cut reads the score
    mask = flag(cut, labels, probs, main if cut == "threshold" else -rank.astype(np.float64),
                _check_threshold(threshold), reference)
    flagged = ranked[mask[ranked]]
    suggested, confidence, agreement = _suggestions(labels, k, pseudo_labels, seen_h, probs,
                                                    prefer_model=score in ("model", "combined"))
    estimate = None if probs is None else int(estimated_issues(labels, probs).sum())
    alarms = false_alarms(labels, probs, reference) if cut == HELD_OUT_CUT else None
    return LabelIssues(flagged, main, suggested, confidence, score, agreement, cut, estimate, alarms)


def _suggestions(labels, k, pseudo_labels, seen, probs, prefer_model: bool):
    """A label other than the given one for every sample, its confidence, and the pseudo-labels'
    agreement with it (the share of kept epochs whose pseudo-label was that label; None without
    pseudo-labels). With ``prefer_model`` (and probabilities) the model's most probable other class
    (confidence: its probability); else the pseudo-label most often chosen over the kept epochs
    (confidence: its share of them), falling back to the model where the pseudo-label never
    differed from the given label (-1: no other label at all)."""
    n = len(labels)
    rows = np.arange(n)
    suggested, confidence = np.full(n, -1, dtype=np.int64), np.zeros(n)
    if probs is not None:
        other = probs.copy()
        other[rows, labels] = -1.0
        suggested, confidence = other.argmax(axis=1), other.max(axis=1)
    if pseudo_labels is None:
        return suggested, confidence, None
    pseudo = _as_history(pseudo_labels, "pseudo_labels").astype(np.int64)
    ok = (pseudo >= 0) & (seen if seen is not None and seen.shape == pseudo.shape else True)
    counts = np.zeros((n, k))
    np.add.at(counts, (np.broadcast_to(rows, pseudo.shape)[ok], pseudo[ok]), 1.0)
    epochs = np.maximum(ok.sum(axis=0), 1)
    counts[rows, labels] = -1.0  # never suggest the given label
    votes = counts.max(axis=1)
    if not (prefer_model and probs is not None):
        use = votes > 0
        suggested = np.where(use, counts.argmax(axis=1), suggested)
        confidence = np.where(use, votes / epochs, confidence)
    # a suggestion is never the given label, so its count is a real one (>= 0); -1: no suggestion
    agreement = np.where(suggested >= 0, counts[rows, np.maximum(suggested, 0)] / epochs, 0.0)
    return suggested, confidence, agreement


def _check_companions(labels: np.ndarray, alpha, seen, pseudo_labels, num_classes: int | None) -> None:
    """``seen`` shaped as the history it marks (``alpha``'s or ``pseudo_labels``'); ``pseudo_labels``
    integer classes (-1: none) with a column per sample, below ``num_classes`` where that is known."""
    pseudo = None if pseudo_labels is None else _as_history(pseudo_labels, "pseudo_labels")
    if seen is not None:
        s, marks = _as_history(seen, "seen"), [h.shape for h in (alpha, pseudo) if h is not None]
        if s.shape not in marks:
            shapes = " or ".join(map(str, marks)) or "neither given"
            raise ValueError(f"seen must have the shape of alpha or pseudo_labels ({shapes}), got {s.shape}")
    if pseudo is None:
        return
    if pseudo.dtype.kind not in "iu" or pseudo.shape[1] != len(labels):
        raise ValueError(f"pseudo_labels must be integer classes, (n,) or (epochs, n) with n = len(labels) = "
                         f"{len(labels)}; got dtype {pseudo.dtype}, shape {pseudo.shape}")
    if num_classes is not None and pseudo.size and pseudo.max() >= num_classes:
        raise ValueError(f"pseudo_labels hold class {int(pseudo.max())}, but there are {num_classes} classes")


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return threshold


def find_label_issues(labels=None, pred_probs=None, *, alpha=None, beta=None, threshold: float | None = None,
                      score: str = "auto", cut: str = "auto", clean_labels=None, clean_pred_probs=None,
                      clean_steered: bool = False) -> np.ndarray:
    """The positions of the samples whose label looks wrong, most suspect first, in cleanlab's
    order of arguments (``find_label_issues(labels, pred_probs)``, as with
    ``return_indices_ranked_by``). With probabilities the number flagged is estimated from the
    data (confident learning, ``cut="count"``); given clean samples (``clean_labels=,
    clean_pred_probs=``) that steered its training through a meta step or that the model trained on
    (``clean_steered=True``: e.g. the clean batches of ``l2b.L2B``), the number their confusion
    explains where it is below that (``cut="clean-confusion"``, see :mod:`l2b.calibrate`); given
    held-out ones, the same where confident learning would flag 15% or more of them
    (``cut="checked-count"``);
    ``threshold=`` gives a fixed cut instead.
    ``alpha``/``beta`` may be one epoch's (n,) weights or the last epochs' (epochs, n);
    :func:`rank_label_issues` also returns the scores and the suggested labels.

    >>> issues = l2b.find_label_issues(y, probs)                                     # any model
    >>> w = np.load("runs/x/weights.npz")
    >>> issues = l2b.find_label_issues(w["noisy"], alpha=w["alpha_history"], beta=w["beta_history"])
    """
    if labels is not None and pred_probs is not None and alpha is None and _looks_like_weights(labels, pred_probs):
        import warnings

        warnings.warn("find_label_issues(alpha, beta) is the old order; call find_label_issues(labels, "
                      "alpha=..., beta=...) (the positional order is now cleanlab's: labels, pred_probs)",
                      DeprecationWarning, stacklevel=2)
        labels, pred_probs, alpha, beta = None, None, labels, pred_probs
    if labels is None:
        if alpha is None:
            raise ValueError("give labels and pred_probs (cleanlab's order), or labels with alpha= and beta=")
        labels = np.zeros(np.shape(alpha)[-1], dtype=np.int64)  # weight scores do not read the labels
    return rank_label_issues(labels, alpha, beta, pred_probs=pred_probs, score=score, threshold=threshold,
                             cut=cut, clean_labels=clean_labels, clean_pred_probs=clean_pred_probs,
                             clean_steered=clean_steered).indices


def _looks_like_weights(first, second) -> bool:
    """The old call ``find_label_issues(alpha, beta)``: two float arrays of one shape, the first
    not a label vector."""
    a, b = as_numpy(first), as_numpy(second)
    return a.dtype.kind == "f" and a.shape == b.shape and (a.ndim == 2 or not np.all(a == np.round(a)))
