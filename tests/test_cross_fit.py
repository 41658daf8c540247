"""Cross-fitted label scores: ``--holdout F/K`` leaves one fold of the noisy training samples out
of a run, and ``l2b label-issues --cross-fit K`` scores every sample with the fold model that
never trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l2b.cli import main as cli_main
from l2b.config import TrainConfig
from l2b.models import predict_probs
from l2b.run_data import fold_positions, prepare_data
from l2b.run_scores import CROSS_FIT_DIR, cross_fit_scores
from l2b.trainer import load_run

RUN = ["--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "2", "--method", "ce",
       "--noise", "symmetric:0.4", "--val-per-class", "5", "--progress", "none"]


def test_folds_partition_the_samples_class_by_class():
    labels = np.random.default_rng(1).integers(0, 7, 103)
    folds = [fold_positions(labels, f, 5, seed=3) for f in range(1, 6)]
    together = np.concatenate(folds)
    assert np.array_equal(np.sort(together), np.arange(103))  # every sample in exactly one fold
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in range(7):
        per_fold = [int((labels[f] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, (c, per_fold)
    assert np.array_equal(folds[0], fold_positions(labels, 1, 5, seed=3))
    assert not np.array_equal(folds[0], fold_positions(labels, 1, 5, seed=4))


def test_holdout_leaves_out_exactly_its_fold():
    base = TrainConfig(data="digits", method="ce", noise="symmetric:0.4", val_per_class=5, seed=2)
    whole = prepare_data(base, needs_clean=False)
    part = prepare_data(TrainConfig(**{**base.__dict__, "holdout": "2/3"}), needs_clean=False)
    held = fold_positions(whole.y_noisy, 2, 3, seed=2)
    assert np.array_equal(part.train_idx, np.delete(whole.train_idx, held))
    assert np.array_equal(part.y_noisy, np.delete(whole.y_noisy, held))  # the same noise on the samples kept
    assert np.array_equal(part.val_idx, whole.val_idx)


@pytest.fixture(scope="module")
def ce_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cf") / "run"
    assert cli_main(["train", *RUN, "--out", str(out)]) == 0
    return out


def test_every_sample_is_scored_by_the_fold_model_that_never_saw_it(ce_run):
    logged = []
    scores = cross_fit_scores(ce_run, 3, which="final", log=logged.append)
    _, prep, (train, _, _), _ = load_run(ce_run)
    run_index = np.load(ce_run / "labels.npz")["train_index"]
    covered = np.zeros(len(run_index), dtype=int)
    for f in range(1, 4):
        fold_dir = ce_run / CROSS_FIT_DIR / f"3-fold-{f}"
        held = fold_positions(train.y.numpy(), f, 3, seed=0)
        covered[held] += 1
        fold_index = np.load(fold_dir / "labels.npz")["train_index"]
        assert not np.isin(run_index[held], fold_index).any()  # the fold model never trained on them
        assert np.array_equal(np.sort(np.concatenate([fold_index, run_index[held]])), np.sort(run_index))
        model = load_run(fold_dir)[3]
        np.testing.assert_allclose(scores.train[held], predict_probs(model, train.take(held), 256), atol=1e-6)
    assert (covered == 1).all()
    assert np.array_equal(scores.labels, np.load(ce_run / "labels.npz")["noisy"])
    assert scores.model == "cross-fit" and "never saw it" in scores.note
    assert len(logged) == 3 and "fold 3 of 3" in logged[-1]
    # finished folds are reused, not trained again
    stamps = {p: p.stat().st_mtime_ns for p in (ce_run / CROSS_FIT_DIR).glob("*/checkpoint.pt")}
    again = cross_fit_scores(ce_run, 3, which="final", log=lambda line: None)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    np.testing.assert_array_equal(again.train, scores.train)


def test_label_issues_cross_fit_writes_its_csv(ce_run, tmp_path, capsys):
    assert cli_main(["label-issues", str(ce_run), "--cross-fit", "3", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "scored out of fold" in out and "cross-fit: fold 1 of 3" in err
    # neither the scored sample nor the held-out clean set trained the model that scores it: the
    # clean set's confusion calibrates the count, as where both steered it
    assert "the clean set's confusion explains" in out and "trained on neither it nor the clean samples" in out
    assert "steered" not in out
    rows = (tmp_path / "label_issues.csv").read_text().splitlines()
    assert len(rows) > 1 and f"{len(rows) - 1} suspected label issues" in out


def test_a_fold_is_not_cross_fitted_again(ce_run, capsys):
    cross_fit_scores(ce_run, 2, which="final", log=lambda line: None)
    assert cli_main(["label-issues", str(ce_run / CROSS_FIT_DIR / "2-fold-1"), "--cross-fit", "2"]) == 2
    assert "is itself one fold of a cross-fit (--holdout 1/2)" in capsys.readouterr().err


def test_more_folds_than_training_samples_are_refused_before_any_fold_trains(ce_run, capsys):
    n = len(load_run(ce_run)[2][0])
    assert cli_main(["label-issues", str(ce_run), "--cross-fit", str(n + 1), "--out", str(ce_run.parent / "many")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"--cross-fit {n + 1}: more folds than the run's {n} training samples; give 2 to {n} (5 is "
                        f"usual: each fold trains a run)"), err
    assert not list((ce_run / CROSS_FIT_DIR).glob(f"{n + 1}-fold-*"))  # refused before any fold trained


def test_a_grid_summary_leaves_the_fold_runs_out(ce_run):
    from l2b.grid import collect

    cross_fit_scores(ce_run, 2, which="final", log=lambda line: None)
    runs = collect(ce_run.parent)
    assert [r["dir"] for r in runs] == [ce_run]  # not its fold runs, trained on part of the data
    assert [r["dir"] for r in collect(ce_run)] == [ce_run]
    fold = ce_run / CROSS_FIT_DIR / "2-fold-1"
    assert [r["dir"] for r in collect(fold)] == [fold]  # a fold asked for by name is that run
    assert cli_main(["report", str(fold)]) == 0


def test_a_fold_of_other_settings_is_refused_and_a_diverged_fold_is_named(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    assert cli_main(["train", *RUN, "--out", str(run)]) == 0
    cross_fit_scores(run, 2, which="final", log=lambda line: None)
    fold = run / CROSS_FIT_DIR / "2-fold-1"
    saved = json.loads((fold / "config.json").read_text())
    metrics = json.loads((fold / "metrics.json").read_text())
    (fold / "config.json").write_text(json.dumps({**saved, "config": {**saved["config"], "epochs": 3}}))
    assert cli_main(["label-issues", str(run), "--cross-fit", "2"]) == 2
    assert "hold runs with other settings" in capsys.readouterr().err  # never taken for this run's fold
    (fold / "config.json").write_text(json.dumps(saved))
    (fold / "metrics.json").write_text(json.dumps({**metrics, "diverged": {"epoch": 0, "what": "loss"}}))
    assert cli_main(["label-issues", str(run), "--cross-fit", "2"]) == 2
    err = capsys.readouterr().err
    assert "2-fold-1: this fold's training diverged" in err and "Traceback" not in err


def test_cross_fitting_a_run_its_clean_set_steered_says_the_count_runs_high(tmp_path, capsys):
    run = tmp_path / "l2b"
    argv = [a if a != "ce" else "l2b" for a in RUN]
    assert cli_main(["train", *argv, "--out", str(run)]) == 0
    assert cli_main(["label-issues", str(run), "--cross-fit", "2", "--out", str(tmp_path / "issues")]) == 0
    err = capsys.readouterr().err
    assert "note: the clean set steered every fold model" in err and "without --cross-fit is the better count" in err
