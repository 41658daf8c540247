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
    """Area under the ROC curve of ``scores`` for ``positive`` (Mann-Whitney U, ties averaged)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label_trust(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    total = alpha + beta
    return np.divide(alpha, total, out=np.zeros_like(alpha, dtype=np.float64), where=total > 0)


def detection_metrics(alpha, beta, is_noisy, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """How well the weights separate corrupted from clean samples.

    ``auc_trust``: ROC-AUC of 1 - alpha/(alpha+beta) for "corrupted"; ``auc_alpha``: of -alpha;
    ``precision`` / ``recall`` of flagging trust < ``threshold``.
    """
    alpha, beta, is_noisy = np.asarray(alpha, float), np.asarray(beta, float), np.asarray(is_noisy, bool)
    trust = label_trust(alpha, beta)
    flagged = trust < threshold
    tp = int((flagged & is_noisy).sum())
    return {
        "auc_trust": roc_auc(1.0 - trust, is_noisy),
        "auc_alpha": roc_auc(-alpha, is_noisy),
        "precision": tp / max(int(flagged.sum()), 1),
        "recall": tp / max(int(is_noisy.sum()), 1),
        "flagged": int(flagged.sum()),
        "corrupted": int(is_noisy.sum()),
        "threshold": threshold,
    }


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


def find_label_issues(run: str | Path, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """Write ``RUN/label_issues.csv`` (index, given_label, suggested_label, score), most suspect
    first; ``index`` is the sample's position in the dataset's training set. Returns a summary with
    precision / recall against the injected noise."""
    run = Path(run)
    labels_path = run / "labels.npz"
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: not found; is {run} a run directory of l2b train?")
    labels = np.load(labels_path)
    given, true, train_index = labels["noisy"], labels["true"], labels["train_index"]
    if (run / "weights.npz").is_file():
        w = np.load(run / "weights.npz")
        score = 1.0 - label_trust(w["alpha"], w["beta"])
        suggested = w["pseudo_labels"]
        source = "last-epoch weights alpha/(alpha+beta)"
    else:
        if not (run / "checkpoint.pt").is_file():
            raise FileNotFoundError(f"{run}: neither weights.npz nor checkpoint.pt to score the labels with")
        probs = _model_scores(run)
        score = 1.0 - probs[np.arange(len(given)), given]
        suggested = probs.argmax(axis=1)
        source = "final model's probability of the given label"
    flagged = np.flatnonzero(score > 1.0 - threshold)
    flagged = flagged[np.argsort(-score[flagged], kind="mergesort")]
    with open(run / "label_issues.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "given_label", "suggested_label", "score"])
        for i in flagged:
            writer.writerow([int(train_index[i]), int(given[i]), int(suggested[i]), f"{score[i]:.6f}"])
    is_noisy = given != true
    tp = int(is_noisy[flagged].sum())
    return {"issues": len(flagged), "source": source, "corrupted": int(is_noisy.sum()),
            "precision": tp / max(len(flagged), 1), "recall": tp / max(int(is_noisy.sum()), 1),
            "auc": roc_auc(score, is_noisy)}
