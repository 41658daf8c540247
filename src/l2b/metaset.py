"""No clean set at hand: a meta set selected from the noisy training data (the paper's future
work, Sec. 4.5: "a subset of pseudo-labeled training data as the validation data").

``select_meta_set`` picks K samples per class from a model's view of the noisy data:

- ``small-loss``: the lowest cross-entropy on the given label, per given class;
- ``confident``: a seeded random draw, per given class, from the samples whose confident class is
  their given label (confident learning: the most probable class among those whose probability
  reaches the class's threshold, the mean probability of the class over the samples labelled with
  it) — not only the easiest ones, as ``small-loss`` takes;
- ``pseudo``: the most confident predictions, per predicted class, relabelled with the prediction.

``MetaSetSelector`` is the trainer's per-epoch hook for ``--meta-set select:KIND``: after the
warm-up epochs it scores the training set with the model, selects, makes the selection the
clean set of the meta steps (``EpochContext.set_clean``), and again every ``refresh`` epochs.
It records each selection (size, class balance, and purity against the true labels where these
are known: a research dataset's, or your own labels under injected noise; null for your own labels
as given, which nobody has checked) in ``meta_set.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calibrate import as_numpy, check_labels, check_pred_probs, confident_classes
from .models import predict_probs
from .rundir import atomic_json

KINDS = {
    "small-loss": "the lowest-loss samples of each given class",
    "confident": "a random draw from the samples whose confident class (per-class thresholds) is their given label",
    "pseudo": "the most confident predictions of each predicted class, relabelled with them",
}
DEFAULT_FRACTION = 0.02  # the paper's clean set: 1,000 of 50,000 images


@dataclass
class Selection:
    """The indices chosen (positions in the scored data), the labels the meta set uses, and per
    class how many were asked and found."""

    indices: np.ndarray
    labels: np.ndarray
    asked: int
    found: dict[int, int] = field(default_factory=dict)

    @property
    def short(self) -> dict[int, int]:
        """The classes with fewer than ``asked`` samples: class -> how many were found."""
        return {c: n for c, n in self.found.items() if n < self.asked}


def select_meta_set(labels, pred_probs=None, *, losses=None, per_class: int, kind: str = "small-loss",
                    class_names=None, seed: int = 0) -> Selection:
    """K = ``per_class`` samples per class chosen from a model's view of noisy data.

    ``labels`` are the given (noisy) labels; ``pred_probs`` (n, K) the model's probabilities
    (needed for ``confident`` and ``pseudo``); ``losses`` (n,) per-sample losses for
    ``small-loss`` (default: cross-entropy from ``pred_probs``); ``seed`` fixes ``confident``'s draw.
    A class with fewer selectable samples gives what it has (``Selection.short`` says which); a
    class with none is an error naming it and the remedy."""
    if kind not in KINDS:
        raise ValueError(f"unknown meta-set kind {kind!r}; choose one of {', '.join(KINDS)}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a whole number, at least 1; got {per_class!r}")
    probs = None if pred_probs is None else as_numpy(pred_probs)
    y = check_labels(labels, None if probs is None else probs.shape[1])
    if probs is not None:
        probs = check_pred_probs(probs, len(y))
    k = probs.shape[1] if probs is not None else int(y.max(initial=-1)) + 1
    if class_names is not None and len(class_names) < k:
        raise ValueError(f"class_names names {len(class_names)} classes, but there are {k}")
    if losses is not None:
        losses = as_numpy(losses).astype(np.float64)
        if losses.shape != y.shape or not np.isfinite(losses).all():
            raise ValueError(f"losses must be one finite number per sample, shape ({len(y)},); got shape {losses.shape}"
                             + ("" if losses.shape != y.shape else ", with NaN or inf"))
    if kind == "small-loss":
        if losses is None:
            if probs is None:
                raise ValueError("small-loss needs losses= or pred_probs=")
            losses = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))
        score, group, candidates = -losses, y, np.ones(len(y), dtype=bool)
        new_labels = y
    elif probs is None:
        raise ValueError(f"{kind} needs pred_probs=")
    elif kind == "confident":
        score = np.random.Generator(np.random.PCG64(seed)).random(len(y))  # a random order ``seed`` fixes
        group, candidates, new_labels = y, confident_classes(y, probs) == y, y
    else:  # pseudo
        pred = probs.argmax(axis=1)
        score, group, candidates, new_labels = probs.max(axis=1), pred, np.ones(len(y), dtype=bool), pred
    chosen, found = [], {}
    for c in range(k):
        members = np.flatnonzero((group == c) & candidates)
        found[c] = min(len(members), per_class)
        if not len(members):
            raise ValueError(f"meta set ({kind}): class {class_name(class_names, c)} has no selectable sample; give "
                             f"a smaller per-class size (--meta-set-size), another kind, or a verified clean set "
                             f"(--meta-set clean)")
        order = members[np.argsort(-score[members], kind="stable")]
        chosen.append(order[:per_class])
    idx = np.concatenate(chosen)
    return Selection(idx, new_labels[idx], per_class, found)


def class_name(class_names, c: int, quote: bool = True) -> str:
    """Class ``c`` by its name where the dataset has names (quoted), else by its index."""
    name = str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)
    return repr(name) if quote and class_names is not None else name


def parse_meta_set(spec: str) -> str | None:
    """``clean`` -> None; ``select:KIND`` -> KIND; anything else is a one-line error."""
    if spec == "clean":
        return None
    kind = spec.partition(":")[2] if spec.startswith("select:") else None
    if kind not in KINDS:
        raise ValueError(f"--meta-set {spec!r}: choose clean or select:KIND with KIND one of {', '.join(KINDS)}")
    return kind


class MetaSetSelector:
    """The per-epoch hook behind ``--meta-set select:KIND`` (see the module's docstring)."""

    def __init__(self, kind: str, per_class: int | None, refresh: int, warmup_epochs: int, out: Path | None,
                 y_true: np.ndarray, class_names, eval_batch_size: int, main_rank: bool = True,
                 leaves: bool = False, seed: int = 0, truth: str | None = "the true labels") -> None:
        self.kind, self.per_class, self.refresh, self.warmup = kind, per_class, refresh, warmup_epochs
        self.truth = truth  # what y_true is, in words; None: not known (your own labels, no noise injected)
        self.leaves, self.seed = leaves, seed
        self.out, self.y_true, self.class_names = out, y_true, class_names
        self.eval_batch_size, self.main_rank = eval_batch_size, main_rank
        self.records: list[dict] = []
        self.selected = None  # the current meta set's split (model selection reads it)

    def due(self, epoch: int) -> bool:
        if epoch < self.warmup:
            return False
        return epoch == self.warmup or (self.refresh > 0 and (epoch - self.warmup) % self.refresh == 0)

    def on_epoch_start(self, epoch: int, ctx) -> None:
        """Select (or reselect) when due; otherwise keep the current selection, rebuilt after a
        resume from the recorded indices."""
        if not self.due(epoch):
            if self.records and self.selected is None:  # resumed between refreshes: the last selection again
                last = self.records[-1]
                self._use(ctx, np.asarray(last["indices"]), np.asarray(last["labels"]), since_epoch=last["epoch"])
            return
        train = ctx.train
        probs = predict_probs(ctx.model, train, self.eval_batch_size).astype(np.float64)
        given = train.y.cpu().numpy()
        k = probs.shape[1]
        per_class = self.per_class or max(1, int(round(DEFAULT_FRACTION * len(given) / k)))
        sel = select_meta_set(given, probs, per_class=per_class, kind=self.kind, class_names=self.class_names,
                              seed=self.seed * 1000003 + epoch)
        if sel.short:
            ctx.log("l2b: warning: meta set: class(es) " + ", ".join(
                f"{class_name(self.class_names, c)} ({n} of {per_class})" for c, n in sel.short.items())
                + " had fewer selectable samples than asked; using what there is")
        purity = None if self.truth is None else round(float((sel.labels == self.y_true[sel.indices]).mean()), 4)
        record = {"epoch": epoch, "kind": self.kind, "per_class": per_class, "size": int(len(sel.indices)),
                  "leaves_stream": self.leaves, "purity": purity,
                  "per_class_found": {class_name(self.class_names, c, quote=False): n for c, n in sel.found.items()},
                  "indices": sel.indices.tolist(), "labels": sel.labels.tolist()}
        self.records.append(record)
        self._use(ctx, sel.indices, sel.labels, since_epoch=epoch)
        ctx.log(f"meta set at epoch {epoch + 1}: {len(sel.indices)} samples ({self.kind}, {per_class} per class), "
                + (f"purity {100 * purity:.1f}% against {self.truth}" if purity is not None else
                   "purity unknown (your own labels, no noise injected: which of them are wrong is not known)"))
        self._write()

    def _use(self, ctx, indices: np.ndarray, labels: np.ndarray, since_epoch: int) -> None:
        """Make this selection the meta steps' clean set (and, with ``leaves``, take it out of the
        noisy stream); its batches are seeded by the epoch it was selected at, so that a resumed
        run continues them."""
        self.selected = ctx.take(indices, labels=labels)
        ctx.set_clean(self.selected, since_epoch=since_epoch)
        if self.leaves:
            ctx.exclude(indices)

    def _write(self) -> None:
        if self.out is not None and self.main_rank:
            atomic_json(self.out / "meta_set.json", {"selections": self.records}, indent=1)

    def state_dict(self) -> dict:
        return {"records": json.dumps(self.records)}

    def load_state_dict(self, state: dict | None) -> None:
        if state:
            self.records = json.loads(state["records"])
            self.selected = None
