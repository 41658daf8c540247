"""Which model of a run scores its labels, and the probabilities it gives them: the final model,
the last one from before it began to memorise them, the best clean-validation epoch's, or
(:func:`cross_fit_scores`) for every training sample a model trained without it. ``l2b
label-issues`` reads its labels' probabilities from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .memorisation import memorised
from .run_model import usable_device
from .rundir import read_json

MODELS = ("auto", "final", "best", "early")  # which of a run's models scores its labels
SAVED_MODELS = {"best": "the best clean-validation epoch", "early": "the last epoch before it began to memorise"}


@dataclass(frozen=True)
class RunScores:
    """A model of a run and its probabilities: ``train`` (n x K, the noisy training samples, with
    the ``labels`` they were trained on), ``clean`` (m x K, the clean set) with ``clean_labels``; the
    run's prepared data (``prep``); which model it is (``model``: final, early for early_model.pt,
    best for best_model.pt) and its 0-based ``epoch``; a ``note`` for the user: why an earlier
    epoch's model was taken, or that the final one memorised."""
    train: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    clean_labels: np.ndarray
    prep: Any
    model: str
    epoch: int
    note: str | None = None
    extra: np.ndarray | None = None  # the same model's probabilities for other samples, when asked

    @property
    def label(self) -> str:
        return f"{self.model} (epoch {self.epoch + 1})"


def run_model_scores(run: Path, which: str = "final", held_out: bool = False, extra=None,
                     data: str | None = None) -> RunScores:
    """The probabilities a model of the run gives its training samples and its clean samples (and
    the samples of ``extra``, a split of l2b.data.batches, when given).

    ``which``: ``final`` (the last checkpoint), ``best`` (best_model.pt, saved at the best
    clean-validation epoch), ``early`` (early_model.pt, saved at the last epoch before the model
    began to memorise its labels: l2b.memorisation) or ``auto``: the final model, unless it has
    memorised its labels since the best-validation epoch (:func:`memorised`, judged on a held-out
    clean set, so only with ``held_out``: the run's clean set is one); then the early model, or
    where the run has none or it memorised too, the best-validation one, when that one had not
    memorised. ``data``: the run's dataset where it is now, when it moved since the run trained."""
    from .models import predict_probs
    from .rundir import load_checkpoint
    from .trainer import load_run

    cfg, prep, (train_data, val_data, _), model = load_run(run, data=data)
    clean_y = val_data.y.cpu().numpy()
    history = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    last_epoch = len(history.get("history", [])) - 1

    def scores(name: str, epoch: int) -> RunScores:
        clean = (predict_probs(model, val_data, cfg.eval_batch_size) if len(val_data) else
                 np.zeros((0, prep.ds.num_classes), dtype=np.float32))  # a run without a clean set
        return RunScores(predict_probs(model, train_data, cfg.eval_batch_size), train_data.y.cpu().numpy(), clean,
                         clean_y, prep, name, epoch,
                         extra=None if extra is None else predict_probs(model, extra, cfg.eval_batch_size))

    def load(name: str) -> RunScores:
        """The scores of ``name``_model.pt (best or early), at the epoch metrics.json names."""
        model.load_state_dict(load_checkpoint(run / f"{name}_model.pt", next(model.parameters()).device))
        return scores(name, history.get(f"{name}_epoch", last_epoch))

    def saved(name: str) -> RunScores | None:
        """The scores of best_model.pt or early_model.pt; None where the run has no such earlier model."""
        earlier = (run / f"{name}_model.pt").is_file() and 0 <= history.get(f"{name}_epoch", -1) < last_epoch
        return load(name) if earlier else None

    if which in SAVED_MODELS:
        if not (run / f"{which}_model.pt").is_file():
            raise FileNotFoundError(f"{run}: no {which}_model.pt: it is {saved_model_origin(which)}; use --model final")
        return load(which)
    final = scores("final", last_epoch)
    judged = held_out and len(clean_y) > 0  # memorisation is judged against a held-out clean set
    best = saved("best") if which == "auto" and judged else None
    if best is None:
        return replace(final, note=_memorised_warning(agreement(final)) if judged else None)
    f, b = agreement(final), agreement(best)
    if not memorised(f, b):
        return replace(final, note=_memorised_warning(f))
    for earlier in (saved("early"), best):  # the model from before it memorised; older runs have no early one
        e = None if earlier is None else agreement(earlier)
        if e is not None and not memorised(e):
            return replace(earlier, note=(
                f"the final model agrees with {100 * f[0]:.1f}% of its training labels against {100 * e[0]:.1f}% at "
                f"{SAVED_MODELS[earlier.model]} ({earlier.epoch + 1}), and is right on {100 * f[1]:.1f}% of the held-out "
                f"clean set against {100 * e[1]:.1f}% then: it has memorised labels since, wrong ones included, so the "
                f"labels are scored with that epoch's model ({earlier.model}_model.pt)" +
                (", whose count can still run low" if earlier is best else "") +
                "; --cross-fit 5 scores every sample with a model that never trained on it, --model final with the "
                "final one"))
    return replace(final, note=_memorised_warning(f))


def saved_model_origin(which: str) -> str:
    """Which runs write best_model.pt or early_model.pt, and when (for the error of a run without it)."""
    whose = ("a run whose clean set is held out, not by one that learned from it (mlc, glc, distill, --train-on-clean) "
             "nor by earlier l2b versions" if which == "early" else "a run with a clean set")
    return f"written at {SAVED_MODELS[which]} by {whose}"


def agreement(scores: RunScores) -> tuple[float, float]:
    """(fit, held): how often the model's top class is the given training label, and how often it
    is the true label of a held-out clean sample."""
    return (float((scores.train.argmax(1) == scores.labels).mean()),
            float((scores.clean.argmax(1) == scores.clean_labels).mean()))


def _memorised_warning(model: tuple[float, float]) -> str | None:
    """A warning when the model scoring the labels has memorised them (and no earlier model of the
    run had not)."""
    fit, held = model
    if not memorised(model):
        return None
    return (f"the model agrees with {100 * fit:.1f}% of its training labels but is right on only {100 * held:.1f}% of "
            f"the held-out clean set: it has memorised its labels, wrong ones included, so its probabilities find "
            f"few of the label issues and the flagged count runs low; score every sample with a model that never "
            f"trained on it (--cross-fit 5: five trainings of this run's settings), or an L2B run of the same data "
            f"(its model does not fit the labels it distrusts)")


CROSS_FIT_DIR = "cross-fit"  # where a run's fold models are trained, inside the run directory


def fold_runs(cfg, run: Path, folds: int) -> list:
    """The configs of the ``folds`` runs that cross-fit a run of config ``cfg``: its own settings,
    each leaving out one fold of its noisy training samples (``--holdout F/K``), trained into
    ``RUN/cross-fit/K-fold-F``."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"--cross-fit {folds!r}: give the number of folds, 2 or more (5 is usual)")
    if cfg.holdout is not None:
        raise ValueError(f"{run} is itself one fold of a cross-fit (--holdout {cfg.holdout}); give the run it was "
                         f"made from")
    return [replace(cfg, holdout=f"{f}/{folds}", out=str(run / CROSS_FIT_DIR / f"{folds}-fold-{f}"), progress="none",
                    device=usable_device(cfg.device)) for f in range(1, folds + 1)]


def cross_fit_scores(run: Path, folds: int, which: str = "auto", held_out: bool = False, log=print) -> RunScores:
    """Out-of-fold probabilities: each noisy training sample of the run scored by the one of
    ``folds`` models, trained with the run's settings on the other folds, that never saw it
    (confident learning's premise; cleanlab's ``cross_val_predict``). The folds are trained, or
    resumed, or reused when finished, under ``RUN/cross-fit``; a fold directory holding other
    settings is refused. ``which`` chooses each fold's model as :func:`run_model_scores` does.
    The clean set's probabilities are the mean of the fold models' (each class's mean then mixes
    the folds as the training samples' do)."""
    from .grid import check_cells, run_one
    from .run_data import fold_positions
    from .trainer import load_run

    cfg, prep, (train_data, val_data, _), _ = load_run(run)
    if folds > len(train_data):  # a fold without a sample would train a whole run to score nothing
        raise ValueError(f"--cross-fit {folds}: more folds than the run's {len(train_data)} training samples; give 2 to "
                         f"{len(train_data)} (5 is usual: each fold trains a run)")
    cfgs = fold_runs(cfg, run, folds)
    check_cells(cfgs)
    labels = train_data.y.cpu().numpy()
    probs = np.zeros((len(labels), prep.ds.num_classes), dtype=np.float32)
    clean, chosen = [], []
    for fold, fold_cfg in enumerate(cfgs, 1):
        held = fold_positions(labels, fold, folds, cfg.seed)
        out = Path(fold_cfg.out)
        log(f"cross-fit: fold {fold} of {folds}, {len(held)} samples held out: {out}")
        run_one(asdict(fold_cfg))  # trains it, or resumes it, or finds it finished
        if read_json(out / "metrics.json").get("diverged"):
            raise ValueError(f"{out}: this fold's training diverged, so no model of it can score its samples; give the "
                             f"run a lower --lr or --clip-grad-norm and train it again")
        s = run_model_scores(out, which, held_out, extra=train_data.take(held))
        probs[held] = s.extra
        clean.append(s.clean)
        chosen.append(s.model)
    earlier = len(chosen) - chosen.count("final")
    note = (f"each training sample scored by the one of {folds} models (this run's settings, trained without its "
            f"fold, in {run / CROSS_FIT_DIR}) that never saw it" +
            (f"; {earlier} of them an earlier epoch's model (early_model.pt or best_model.pt), their final one having "
             f"memorised its labels" if earlier else ""))
    return RunScores(probs, labels, np.mean(clean, axis=0) if len(val_data) else clean[0], val_data.y.cpu().numpy(),
                     prep, "cross-fit", -1, note)
