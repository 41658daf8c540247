"""What the learned weights say about the labels: noise-detection metrics and label issues.

A meta method's last-epoch weights give every training sample a trust score for its given label,
``alpha / (alpha + beta)`` (0 when both are 0: the meta-gradient wanted neither). Low trust means
the run believes the label is wrong, and the pseudo-label is the suggested fix. Runs without
per-sample weights fall back to the final model's probability of the given label.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

# A sample is flagged when its label trust is below this (beta outweighs alpha).
DEFAULT_THRESHOLD = 0.5


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney U, ties averaged),
    vectorised: O(n log n) in numpy."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
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
    """Precision and recall of a boolean mask of flagged samples against the corrupted ones."""
    tp = int((flagged & is_noisy).sum())
    return {"precision": tp / max(int(flagged.sum()), 1), "recall": tp / max(int(is_noisy.sum()), 1),
            "flagged": int(flagged.sum()), "corrupted": int(is_noisy.sum())}


def detection_metrics(alpha, beta, is_noisy, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """How well the weights separate corrupted from clean samples.

    ``auc_trust``: ROC-AUC of 1 - alpha/(alpha+beta) for "corrupted"; ``auc_alpha``: of -alpha;
    ``precision`` / ``recall`` of flagging trust < ``threshold``.
    """
    alpha, beta, is_noisy = np.asarray(alpha, float), np.asarray(beta, float), np.asarray(is_noisy, bool)
    trust = label_trust(alpha, beta)
    return {"auc_trust": roc_auc(1.0 - trust, is_noisy), "auc_alpha": roc_auc(-alpha, is_noisy),
            **flag_metrics(trust < threshold, is_noisy), "threshold": threshold}


def label_issue_scores(alpha=None, beta=None, *, labels=None, pred_probs=None) -> np.ndarray:
    """How suspect each given label is, in [0, 1]: 1 - alpha/(alpha+beta) from a meta method's
    weights, or 1 - p(given label) from a model's predicted probabilities (``labels`` and
    ``pred_probs``, as cleanlab takes them)."""
    if alpha is not None and beta is not None:
        return 1.0 - label_trust(np.asarray(alpha, float), np.asarray(beta, float))
    if labels is None or pred_probs is None:
        raise ValueError("give alpha and beta (a meta method's weights), or labels and pred_probs")
    labels, pred_probs = np.asarray(labels), np.asarray(pred_probs, dtype=np.float64)
    if pred_probs.ndim != 2 or len(pred_probs) != len(labels):
        raise ValueError(f"pred_probs must be (n, classes) with n = len(labels) = {len(labels)}, got {pred_probs.shape}")
    return 1.0 - pred_probs[np.arange(len(labels)), labels]


def find_label_issues(alpha=None, beta=None, *, labels=None, pred_probs=None,
                      threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """The positions of the samples whose label looks wrong, most suspect first: trust (or the
    model's probability of the given label) below ``threshold``.

    >>> issues = l2b.find_label_issues(w["alpha"], w["beta"])          # from a run's weights.npz
    >>> issues = l2b.find_label_issues(labels=y, pred_probs=probs)      # from any model
    """
    return rank_issues(label_issue_scores(alpha, beta, labels=labels, pred_probs=pred_probs), threshold)


def rank_issues(score: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Positions whose score exceeds 1 - ``threshold`` (trust below it), most suspect first."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    flagged = np.flatnonzero(score > 1.0 - threshold)
    return flagged[np.argsort(-score[flagged], kind="mergesort")]


def _model_scores(run: Path):
    """Probabilities of the final model on the run's training samples (for runs without weights)."""
    import torch

    from .train import load_run

    cfg, prep, (train_data, _, _), model = load_run(run)
    model.eval()
    probs = torch.zeros(len(train_data), prep.ds.num_classes)
    with torch.no_grad():
        for x, _, idx, _ in train_data.epoch(cfg.eval_batch_size, seed=0, augment=False):
            probs[idx.cpu()] = torch.softmax(model(x).float(), dim=1).cpu()
    return probs.numpy()


def write_label_issues(run: str | Path, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """``l2b label-issues RUN``: write ``RUN/label_issues.csv`` (index, given_label,
    suggested_label, score), most suspect first; ``index`` is the sample's position in the
    dataset's training set. Returns a summary with precision / recall against the injected noise."""
    run = Path(run)
    labels_path = run / "labels.npz"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: not found; is {run} a run directory of l2b train?")
    labels = np.load(labels_path)
    given, true, train_index = labels["noisy"], labels["true"], labels["train_index"]
    if (run / "weights.npz").is_file():
        w = np.load(run / "weights.npz")
        score = label_issue_scores(w["alpha"], w["beta"])
        suggested = w["pseudo_labels"]
        source = "last-epoch weights alpha/(alpha+beta)"
    else:
        if not (run / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"{run}: neither weights.npz nor checkpoint.pt to score the labels with")
        probs = _model_scores(run)
        score = label_issue_scores(labels=given, pred_probs=probs)
        suggested = probs.argmax(axis=1)
        source = "final model's probability of the given label"
    flagged = rank_issues(score, threshold)
    with open(run / "label_issues.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "given_label", "suggested_label", "score"])
        writer.writerows([int(train_index[i]), int(given[i]), int(suggested[i]), f"{score[i]:.6f}"] for i in flagged)
    is_noisy = given != true
    mask = np.zeros(len(given), dtype=bool)
    mask[flagged] = True
    m = flag_metrics(mask, is_noisy)
    return {"issues": len(flagged), "source": source, "corrupted": m["corrupted"],
            "precision": m["precision"], "recall": m["recall"], "auc": roc_auc(score, is_noisy)}
