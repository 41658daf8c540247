"""``l2b label-issues RUN``: the labels a finished run believes wrong, as a CSV a person can act on
(file paths and class names for image folders), and a picture of the top suspects.

The scores and suggestions come from :func:`l2b.detect.rank_label_issues`; how many are flagged
from :mod:`l2b.calibrate` (by default the estimated number of issues). A clean set drawn from
the user's own (unverified) training labels is scored too, so that no sample goes unexamined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibrate import CLEAN_CUTS, FALSE_ALARM_LIMIT, HELD_OUT_CUT, STEERED_CUT, uncovered_classes
from .detect import SCORES, flag_metrics, rank_label_issues, roc_auc
from .label_issue_files import issue_rows, show_suspects, write_csv
from .metaset import class_name, parse_meta_set
from .methods import METHODS, learns_from_clean, options_of
from .rundir import not_a_run, read_json, read_npz, writable_dir
from .run_scores import MODELS, cross_fit_scores, run_model_scores

SMALL_CLEAN_PER_CLASS = 10  # clean samples per class at or below which a steered count is noted as running high

MAX_SHOW = 512  # suspects in one picture (8 a row: 64 rows, about 15,000 px tall)


def write_label_issues(run: str | Path, threshold: float | None = None, score: str = "auto", cut: str = "auto",
                       out: str | Path | None = None, show: int = 0, model: str = "auto", cross_fit: int = 0,
                       log=print, data: str | None = None) -> dict:
    """Write ``label_issues.csv`` (into ``out``, default the run directory), most suspect first:
    ``index`` (position in the dataset's training set), ``split`` (train, or clean for a clean
    sample drawn from unverified labels), ``given_label`` / ``given_class``,
    ``suggested_label`` / ``suggested_class``, ``confidence``, ``pseudo_agreement``, ``score`` and,
    for image-file datasets, ``path``. ``show`` > 0 also writes ``label_issues.png`` with the top
    ``show`` suspects. ``model``: which of the run's models scores the labels (``final``, ``best``:
    best_model.pt, ``early``: early_model.pt, or ``auto``: the final one unless it has memorised its
    labels since the best clean-validation epoch; see :func:`run_model_scores`). ``cross_fit`` = K > 1: score every
    training sample with a model that never trained on it, out of K trained with the run's settings
    (:func:`l2b.run_scores.cross_fit_scores`; ``log`` hears of each fold). Returns a summary: how many were flagged and
    estimated, the model used, and precision, recall, F1 and ROC-AUC against the injected noise
    where there is any."""
    run = Path(run)
    if not 0 <= show <= MAX_SHOW:
        raise ValueError(f"--show {show}: give 0 (no picture) to {MAX_SHOW} suspects to draw; every flagged sample "
                         f"is listed in label_issues.csv")
    if threshold is not None and cut not in ("auto", "threshold"):
        raise ValueError(f"--threshold {threshold} is a fixed cut and --cut {cut} another: give one of them")
    if cross_fit and score not in ("auto", "model"):
        raise ValueError(f"--cross-fit scores with the fold models' probabilities; --score {score} reads this run's "
                         f"weights: drop one of them")
    if cross_fit and data is not None:
        raise ValueError(f"--data with --cross-fit: the fold runs keep the data's place of their own config; put the "
                         f"data back where {run} trained on it to cross-fit, or score in sample with --data")
    labels_path = run / "labels.npz"
    if not labels_path.is_file():
        raise not_a_run(run, "label-issues", f"{labels_path}: not found; is {run} a run directory of l2b train?")
    if model not in MODELS:
        raise ValueError(f"--model {model!r}: choose one of {', '.join(MODELS)}")
    if score != "auto" and score not in SCORES:
        raise ValueError(f"--score {score!r}: choose auto or one of {', '.join(SCORES)}")
    diverged = read_json(run / "metrics.json").get("diverged") if (run / "metrics.json").is_file() else None
    if diverged:
        raise ValueError(f"{run}: this run diverged ({diverged['what']} became NaN/inf at epoch {diverged['epoch'] + 1}) "
                         f"and has no trained model to judge labels with; train it again with a lower --lr or "
                         f"--clip-grad-norm, then run label-issues on that run")
    out = writable_dir(Path(out) if out is not None else run)
    labels = read_npz(labels_path, need=("noisy", "true", "train_index", "val_index"))
    given, true, train_index = labels["noisy"], labels["true"], labels["train_index"]
    n_given = len(given)
    w = read_npz(run / "weights.npz", need=("alpha", "beta")) if (run / "weights.npz").is_file() else None
    has_model = (run / "checkpoint.pt").is_file()
    if score == "auto":
        score = "model" if has_model or w is None or cross_fit else "trust"
    weights = {}
    if w is not None:
        hist = "alpha_history" in w and score != "trust"
        if not hist and score in ("trust-mean", "weights-mean"):
            score = "trust"  # a run of an earlier version: one epoch's weights only
        weights = {"alpha": w["alpha_history"] if hist else w["alpha"], "beta": w["beta_history"] if hist else w["beta"],
                   "pseudo_labels": w["pseudo_history"] if "pseudo_history" in w else w["pseudo_labels"],
                   "seen": w["seen_history"] if hist else None}
        # GLC's weights also cover its clean samples: keep the noisy ones
        weights = {k: None if v is None else v[..., :n_given] for k, v in weights.items()}
    elif score != "model":
        raise FileNotFoundError(f"{run}: no weights.npz (method without per-sample weights); use --score model")
    config = read_json(run / "config.json", need=("config",))["config"] if (run / "config.json").is_file() else {}
    from .config import labels_as_given

    val_index = labels["val_index"].astype(np.int64)
    # a clean set drawn from the user's own training labels is as unverified as the rest: score it
    with_clean = bool(len(val_index)) and labels_as_given(config.get("data", ""), config.get("noise"))
    # a verified clean set is the reference of the default cut; one the model learned from serves
    # only clean-confusion's count, which confident learning's caps
    reference = not with_clean and config.get("method") in METHODS
    learned = reference and clean_learned(config, run)
    probs = clean_probs = prep = scored = None
    clean_ref, steered = {}, False  # steered: the clean set of the reference steered training
    if has_model and (score in ("model", "combined") or cut != "threshold"):
        held_out = reference and not learned  # memorisation is judged against a held-out clean set only
        scored = (cross_fit_scores(run, cross_fit, model, held_out, log) if cross_fit else
                  run_model_scores(run, model, held_out, data=data))
        probs, clean_probs, val_y, prep = scored.train, scored.clean, scored.clean_labels, scored.prep
        if reference and len(clean_probs) and threshold is None and \
                cut in (("auto", STEERED_CUT) if learned else ("auto", *CLEAN_CUTS)):
            # the clean set is the default cut's reference where the model that scores a training sample
            # treats it as it treats the clean samples: both steered it (a meta step), or neither trained
            # it (scored out of fold); or where the model learned from the clean samples, so that the
            # count they explain errs high, as a steered one does, and confident learning's caps it
            steered = clean_steered(config, run)
            clean_ref = {"clean_labels": val_y, "clean_pred_probs": clean_probs,
                         "clean_steered": steered or learned or bool(cross_fit)}
        if not with_clean:
            clean_probs = None
    elif score in ("model", "combined"):
        raise FileNotFoundError(f"{run}: no checkpoint.pt to score the labels with; use a weight score")
    split = np.array(["train"] * n_given)
    index = train_index
    if clean_probs is not None:  # the clean samples join as samples without weights
        clean_labels = prep.ds.y_train.numpy()[val_index]
        given = np.concatenate([given, clean_labels])
        true = np.concatenate([true, clean_labels])
        probs = np.concatenate([probs, clean_probs])
        split = np.concatenate([split, np.array(["clean"] * len(val_index))])
        index = np.concatenate([train_index, val_index])
        weights = {k: None if v is None else _pad(v, len(val_index), k) for k, v in weights.items()}
    if cut in CLEAN_CUTS and not clean_ref:
        why = ("no checkpoint.pt to score it with" if scored is None else
               "its clean set was drawn from your own training labels, which nobody verified" if with_clean else
               "it has no clean set" if not len(val_index) else
               f"its model learned from its clean set, which then serves --cut {STEERED_CUT} only" if learned else
               "its clean set is no held-out reference of its model")
        raise ValueError(f"--cut {cut} reads a verified clean set, and {run}: {why}; use --cut auto or count")
    issues = rank_label_issues(given, **weights, pred_probs=probs, score=score, threshold=threshold, cut=cut,
                               **clean_ref)
    classes = _classes(run, config, prep)
    paths = _paths(prep, index, split)
    votes = _votes(prep, index)
    rows = issue_rows(issues, index, split, given, classes, paths, votes)
    write_csv(out / "label_issues.csv", rows, bool(paths), bool(votes))
    picture, shown = None, 0
    if show > 0:
        picture, shown = show_suspects(out / "label_issues.png", issues, index, split, given, classes, show, run, prep, data)
    is_noisy = given != true
    mask = np.zeros(len(given), dtype=bool)
    mask[issues.indices] = True
    m = flag_metrics(mask, is_noisy)
    return {"issues": len(issues.indices), "estimated": issues.estimated, "cut": issues.cut,
            "false_alarms": issues.false_alarms,
            "source": SCORES[issues.source], "score": issues.source, "csv": out / "label_issues.csv", "rows": rows,
            "picture": picture, "shown": shown, "clean_scored": int((split == "clean").sum()),
            "clean_steered": steered, "clean_learned": bool(clean_ref) and learned, "out_of_fold": bool(cross_fit),
            "model": None if scored is None else scored.model, "model_epoch": None if scored is None else scored.epoch + 1,
            "warning": scored.note if scored is not None and scored.model == "final" else None,
            "note": scored.note if scored is not None and scored.model in ("best", "early", "cross-fit") else None,
            "count_note": _count_note(issues.cut, cut == "auto", steered, cross_fit, clean_ref, given[split == "train"],
                                      classes),
            "corrupted": m["corrupted"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
            "auc": roc_auc(issues.score, is_noisy),
            "fix_accuracy": float((issues.suggested[is_noisy] == true[is_noisy]).mean()) if is_noisy.any() else None}


def _small_clean_note(clean_labels: np.ndarray) -> str | None:
    """Where a small clean set steered training, the count it calibrates runs high: the meta step
    tunes the weights of the training samples on it, so the model is surer of it than of the
    correctly labelled training samples (benchmarks/RESULTS.md, "Label issues: the calibrated cut",
    the own-data regime, 12 seeds: 10 clean per class, 1.04-1.64x the wrong labels at 20% wrong; 20
    per class 0.82-1.27x; 40 per class 0.77-1.10x)."""
    per_class = np.bincount(clean_labels)
    per_class = per_class[per_class > 0]
    if per_class.mean() > SMALL_CLEAN_PER_CLASS:
        return None
    return (f"the {len(clean_labels)} clean samples ({per_class.mean():.0f} per class) that steered the training are "
            f"few: the model is surer of them than of your correctly labelled samples, so the flagged count can run "
            f"high (1.0-1.6x the wrong labels where 20% were wrong, benchmarks/RESULTS.md); the list is ranked, so "
            f"review it from the top; on the same data 20 clean per class gave 0.82-1.27x, 40 gave 0.77-1.10x")


def _count_note(cut: str, default: bool, steered: bool, cross_fit: int, clean_ref: dict, labels: np.ndarray,
                classes: list[str]) -> str | None:
    """What the console says of the flagged count, if anything: where a steering clean set calibrated
    it, how far it can run high (out of fold, or with few clean samples); where the default could not
    use the clean set for want of a class, why."""
    if cut == STEERED_CUT and steered:
        return _steered_folds_note() if cross_fit else _small_clean_note(clean_ref["clean_labels"])
    if default and cut == "count" and clean_ref:
        return _uncovered_note(labels, clean_ref["clean_labels"], classes, clean_ref["clean_steered"])
    if default and cut == "count":
        return _unchecked_note()
    return None


def _unchecked_note() -> str:
    """Without a verified clean set nothing checks confident learning's count, which runs high where
    the model is unsure of whole classes (benchmarks/RESULTS.md, "Label issues: the calibrated cut":
    1.2-2.2x the wrong labels on the memorisation recipe)."""
    return ("no verified clean set checked this count: it is confident learning's estimate from the model alone, "
            "which runs high where the model is unsure of whole classes (1.2-2.2x the wrong labels on the "
            "memorisation recipe, benchmarks/RESULTS.md, 'Label issues: the calibrated cut'); the list is ranked, so "
            "review it from the top, or give the run a verified clean set to check the count against")


def _uncovered_note(labels: np.ndarray, clean_labels: np.ndarray, classes: list[str], steered: bool) -> str | None:
    """Where the clean set lacks a labelled class, the count it would calibrate (``steered``) or
    check cannot be had, and the default falls back to confident learning's: say which classes,
    and the fix."""
    missing = uncovered_classes(labels, clean_labels)
    if not len(missing):
        return None
    names = ", ".join(class_name(classes or None, int(c)) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
    instead = ("not the one the clean set's confusion explains (it runs high where a meta step or the model learned "
               "from the clean set" if steered else
               "unchecked by the held-out clean set (it runs high where the model is unsure of whole classes")
    return (f"the clean set has no sample of class(es) {names}, so the count is confident learning's estimate, "
            f"{instead}, benchmarks/RESULTS.md, 'Label issues: the calibrated cut'); add clean samples of every class")


def _steered_folds_note() -> str:
    """Cross-fitting a run whose clean set steered training: every fold model was fitted towards the
    clean set, never towards the samples it scores, so the count runs high (benchmarks/RESULTS.md,
    "Label issues: scoring out of fold", the steered runs)."""
    return ("the clean set steered every fold model (a meta step read it) while the samples they score trained none "
            "of them, so the model is surer of the clean set and the flagged count runs higher than in sample "
            "(1.19-1.88x the wrong labels where in sample gave 1.04-1.64x, benchmarks/RESULTS.md); cross-fitting is "
            "for runs that never learned from their clean set (CE, co-teaching), and l2b label-issues without "
            "--cross-fit is the better count here")


def _checked_count(s: dict) -> str:
    """How the held-out clean set checked confident learning's count."""
    alarms = s.get("false_alarms")
    if alarms is None:
        return f"cut {HELD_OUT_CUT}"
    share = f"confident learning would flag {100 * alarms:.0f}% of the held-out clean samples, whose labels are right"
    if alarms < FALSE_ALARM_LIMIT:
        return f"confident learning's estimate, checked against the held-out clean set: {share} (under {FALSE_ALARM_LIMIT:.0%})"
    return (f"the number of wrong labels the held-out clean set's confusion explains, or confident learning's estimate "
            f"where smaller: {share}, so the model is unsure of whole classes and that estimate runs high")


def console_lines(s: dict) -> tuple[list[str], list[str]]:
    """What ``l2b label-issues`` says about a summary of :func:`write_label_issues`: the lines for
    the console, and the notes and warnings (for stderr)."""
    how = {"count": f"the estimated number of issues, {s['estimated']}",
           "clean-confusion": "the number of wrong labels the clean set's confusion explains, or confident learning's "
                              "estimate where smaller" + (" (the model learned from the clean samples, so it is at "
                                                          "least as sure of them as of your correct labels and the "
                                                          "count they explain errs high)" if s.get("clean_learned") else
                                                          " (the clean samples steered the training, so the model treats "
                                                          "them as it treats the training samples of their class)"
                                                          if s["clean_steered"] else
                                                          " (scored out of fold: the model that scores a training "
                                                          "sample trained on neither it nor the clean samples, so it "
                                                          "treats them alike)" if s.get("out_of_fold") else ""),
           "clean-quantile": "labels less probable than the true label of 90% of the held-out clean samples",
           HELD_OUT_CUT: _checked_count(s),
           }.get(s["cut"], f"cut {s['cut']}")
    if s["cut"] != "count" and s["estimated"] is not None:
        how += f"; confident learning estimates {s['estimated']}"
    out = [f"wrote {s['csv']}: {s['issues']} suspected label issue{'' if s['issues'] == 1 else 's'} flagged ({how}; score {s['score']}: "
           f"{s['source']})" + (f"; {s['clean_scored']} clean samples drawn from your labels scored too"
                                 if s["clean_scored"] else "")
           + ("" if s["model"] in (None, "cross-fit") else f"; the model of epoch {s['model_epoch']}"
              + (f" ({s['model']}_model.pt)" if s["model"] in ("best", "early") else ", the final one"))
           + ("; scored out of fold" if s["model"] == "cross-fit" else "")]
    if s["picture"]:
        out.append(f"wrote {s['picture']}: the top {s['shown']} suspect{'' if s['shown'] == 1 else 's'}")
    if s["corrupted"]:
        out.append(f"against the injected noise ({s['corrupted']} corrupted labels): precision {s['precision']:.3f}, "
                   f"recall {s['recall']:.3f}, F1 {s['f1']:.3f}, ROC-AUC {s['auc']:.3f}; the suggested label is "
                   f"the true one for {100 * s['fix_accuracy']:.1f}% of the corrupted samples")
    elif s["issues"]:  # your own labels: what to do with the list
        out.append("next: review it from the top, then train again without the samples you confirm wrong "
                   "(--exclude FILE) or with the labels you correct (--relabel FILE, its suggestions where you keep "
                   "them): docs/data.md, 'Training again without them'")
    err = [f"note: {s[k]}" for k in ("note", "count_note") if s.get(k)] + ([f"warning: {s['warning']}"] if s["warning"] else [])
    return out, err


def clean_steered(config: dict, run: Path) -> bool:
    """Whether the run's clean set steered its model towards itself without being trained on: a
    meta step weighted each training sample on a clean batch every step (L2B, L2RW; not MW-Net,
    whose shared loss-to-weight network pulls little: ``Method.fits_to_clean``), and no
    ``--meta-set select:KIND`` replaced that set."""
    method = config.get("method")
    if method not in METHODS:
        return False
    return METHODS[method].fits_to_clean(options_of(method, _method_options(config, run))) and \
        parse_meta_set(config.get("meta_set", "clean")) is None


def clean_learned(config: dict, run: Path) -> bool:
    """Whether the run's final model learned from its clean labels (trained on them, as with
    ``--train-on-clean``, GLC or MLC's mix mode, or taught by a teacher that was: distill)."""
    return config.get("method") in METHODS and learns_from_clean(
        config["method"], _method_options(config, run), config.get("train_on_clean", False))


def _method_options(config: dict, run: Path) -> dict:
    """The options the run's method ran with: those given, and those the trainer resolved."""
    saved = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    return config.get("method_args", {}) | saved.get("resolved", {}).get("method_options", {})


def _pad(v: np.ndarray, extra: int, name: str) -> np.ndarray:
    """Weights of the training samples, extended to the clean samples (never weighted)."""
    fill = -1 if name == "pseudo_labels" else 0
    pad = np.full(v.shape[:-1] + (extra,), fill, dtype=v.dtype)
    return np.concatenate([v, pad], axis=-1)


def _classes(run: Path, config: dict, prep) -> list[str]:
    if prep is not None:
        return [str(c) for c in prep.ds.classes]
    saved = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    return [str(c) for c in saved.get("data", {}).get("classes", [])]


def _votes(prep, index: np.ndarray) -> list[str] | None:
    """Each scored sample's votes (a csv of annotators' votes; else None), most first: "cat 2, dog 1"."""
    votes = getattr(prep.ds, "votes", None) if prep is not None else None
    if not votes:
        return None
    return [", ".join(f"{label} {count}" for label, count in votes.get(prep.ds.train[int(i)][0], {}).items())
            for i in index]


def _paths(prep, index: np.ndarray, split: np.ndarray) -> list[str] | None:
    """The image file of every scored sample (image-file datasets; None for arrays): for a csv
    list, as the list gives it (relative to the list's folder, so that the rows join your list);
    else the file's full path."""
    from .data import FileDataset

    if prep is None or not isinstance(prep.ds, FileDataset):
        return None
    return [prep.ds.shown_path(prep.ds.train[int(i)][0]) for i in index]
