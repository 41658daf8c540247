"""Noise-detection metrics, label issues and the HTML report on real (tiny) runs."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from l2b.cli import main as cli_main
from l2b.detect import detection_metrics, roc_auc


def test_roc_auc_matches_the_pairwise_definition():
    rng = np.random.Generator(np.random.PCG64(0))
    scores = np.round(rng.random(200), 1)  # many ties
    positive = rng.random(200) < 0.3
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in scores[positive] for b in scores[~positive]]
    assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    assert roc_auc(np.arange(4.0), np.array([False, False, True, True])) == 1.0


def test_detection_metrics_on_known_weights():
    alpha = np.array([0.3, 0.2, 0.0, 0.05, 0.0])
    beta = np.array([0.0, 0.1, 0.2, 0.1, 0.0])
    noisy = np.array([False, False, True, True, False])
    m = detection_metrics(alpha, beta, noisy)
    # trust = [1, 2/3, 0, 1/3, 0]: flagged = samples 2, 3, 4
    assert m["flagged"] == 3 and m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["auc_trust"] == pytest.approx(roc_auc(1 - np.array([1, 2 / 3, 0, 1 / 3, 0]), noisy))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    assert cli_main(["compare", "--data", "digits", "--model", "mlp", "--width", "32", "--methods", "ce,l2b",
                     "--noise", "symmetric:0.3,symmetric:0.5", "--seeds", "2", "--epochs", "3",
                     "--val-per-class", "5", "--batch-size", "64", "--out", str(out)]) == 0
    return out


def test_report_renders_valid_pngs_referenced_by_the_html(grid):
    assert cli_main(["report", str(grid)]) == 0
    page = (grid / "report.html").read_text()
    for name in ("accuracy.png", "weights.png", "alpha_minus_beta.png", "transition.png"):
        data = (grid / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
        assert f"data-file='{name}'" in page
    assert len(re.findall(r"src='data:image/png;base64,", page)) >= 4
    assert "ROC-AUC" in page and page.count("<tr><td>l2b</td>") >= 4


def test_report_draws_the_weights_over_epochs(grid):
    assert cli_main(["report", str(grid)]) == 0
    data = (grid / "separation.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and "data-file='separation.png'" in (grid / "report.html").read_text()


def test_report_draws_when_memorising_began(grid):
    """Each run logs its agreement with its training labels beside its clean accuracy, and the
    report draws both with the epoch of each run's early_model.pt."""
    import json

    assert cli_main(["report", str(grid)]) == 0
    data = (grid / "memorisation.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and "data-file='memorisation.png'" in (grid / "report.html").read_text()
    metrics = [json.loads(p.read_text()) for p in grid.rglob("metrics.json")]
    assert metrics and all(m["early_epoch"] >= 0 and all(h["train_fit"] is not None for h in m["history"])
                           for m in metrics)


def test_every_method_has_its_own_look_and_l2b_stands_out():
    from l2b.methods import METHODS
    from l2b.report import method_style

    methods = sorted(METHODS)
    looks = [(method_style(m, methods)["color"], method_style(m, methods)["linestyle"]) for m in methods]
    assert len(set(looks)) == len(methods)
    colours = [c for c, _ in looks]
    assert len(set(colours)) == len(methods)  # colour alone tells them apart
    l2b = method_style("l2b", methods)
    assert l2b["linewidth"] > max(method_style(m, methods)["linewidth"] for m in methods if m != "l2b")
    assert l2b["zorder"] > max(method_style(m, methods)["zorder"] for m in methods if m != "l2b")


def test_report_on_a_single_run(grid):
    run = grid / "l2b" / "symmetric_0.5" / "seed0"
    assert cli_main(["report", str(run)]) == 0
    assert (run / "report.html").is_file() and (run / "weights.png").is_file()


def test_label_issues_ranks_suspects_and_scores_against_the_truth(grid, capsys, tmp_path):
    run = grid / "l2b" / "symmetric_0.5" / "seed0"
    assert cli_main(["label-issues", str(run)]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader(open(run / "label_issues.csv")))
    # 5 clean per class steered the training: a note says the count can run high, and what to do
    assert "note: the 50 clean samples (5 per class) that steered the training are few" in err
    assert "review it from the top; on the same data 20 clean per class gave" in err
    assert list(rows[0]) == ["index", "split", "given_label", "given_class", "suggested_label", "suggested_class",
                             "confidence", "pseudo_agreement", "score"]
    assert all(r["given_class"] == r["given_label"] and r["split"] == "train" for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    # the default cut is calibrated on the clean set (l2b never trains on it, but its meta step
    # steers by it), not a fixed 0.5
    assert f"{len(rows)} suspected label issues flagged (the number of wrong labels the clean set's confusion " \
           f"explains, or confident learning's estimate where smaller" in out
    # asked for on a CE run, whose clean set is held out: no word of steering, no note on its size
    assert cli_main(["label-issues", str(grid / "ce" / "symmetric_0.5" / "seed0"), "--cut", "clean-confusion"]) == 0
    out_ce, err_ce = capsys.readouterr()
    assert "the clean set's confusion explains, or confident learning's estimate where smaller;" in out_ce
    assert "steered" not in out_ce + err_ce
    # by default a held-out clean set checks confident learning's count, and the console gives the share
    assert cli_main(["label-issues", str(grid / "ce" / "symmetric_0.5" / "seed0"), "--out", str(tmp_path / "ce")]) == 0
    out_ce = capsys.readouterr().out
    assert re.search(r"\(confident learning's estimate, checked against the held-out clean set: confident learning "
                     r"would flag \d+% of the held-out clean samples, whose labels are right \(under 15%\); confident "
                     r"learning estimates \d+;", out_ce) or "so the model is unsure of whole classes" in out_ce, out_ce
    assert cli_main(["label-issues", str(run), "--cut", "count"]) == 0  # no clean reference: the estimated count
    counted = capsys.readouterr().out
    n = len(list(csv.DictReader(open(run / "label_issues.csv"))))
    assert f"{n} suspected label issues flagged (the estimated number of issues, {n};" in counted
    assert all(r["suggested_label"] != r["given_label"] for r in rows)  # a fix, never the label itself
    assert "score model" in out  # the default, chosen by benchmarks/label_issues.py
    assert all(0 <= float(r["pseudo_agreement"]) <= 1 for r in rows)  # the run kept its epochs' pseudo-labels
    for score in ("trust", "trust-mean", "weights-mean", "combined"):
        assert cli_main(["label-issues", str(run), "--score", score]) == 0
        assert f"score {score}" in capsys.readouterr().out
    labels = np.load(run / "labels.npz")
    truth = dict(zip(labels["train_index"].tolist(), (labels["noisy"] != labels["true"]).tolist()))
    precision = np.mean([truth[int(r["index"])] for r in rows])
    assert f"precision {precision:.3f}" in out
    assert precision > 0.5  # better than the 45% base rate of corrupted labels


def test_label_issues_without_weights_uses_the_model(grid, capsys):
    run = grid / "ce" / "symmetric_0.5" / "seed0"
    assert cli_main(["label-issues", str(run)]) == 0
    out = capsys.readouterr().out
    assert "the model's probability of the given label" in out and "the final one" in out
    rows = list(csv.DictReader(open(run / "label_issues.csv")))
    labels = np.load(run / "labels.npz")
    assert 0 < len(rows) <= len(labels["noisy"])
    assert {int(r["index"]) for r in rows} <= set(labels["train_index"].tolist())  # dataset positions


def test_report_on_an_empty_directory_is_a_clear_error(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_report_draws_normalisation_and_bootstrap_beta_sweeps_when_present(tmp_path):
    from l2b.trainer import TrainConfig, train

    base = dict(data="digits", model="mlp", width=16, epochs=1, val_per_class=5, progress="none")
    for norm in ("sum", "softmax"):
        train(TrainConfig(**base, method="l2b", method_args={"normalize": norm, "temperature": 0.1}, out=str(tmp_path / f"l2b-{norm}")))
    for beta in (0.6, 0.8):
        train(TrainConfig(**base, method="bootstrap", method_args={"beta": beta}, out=str(tmp_path / f"boot-{beta}")))
    assert cli_main(["report", str(tmp_path)]) == 0
    for name in ("normalisations.png", "bootstrap_beta.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert f"data-file='{name}'" in (tmp_path / "report.html").read_text()


def test_find_label_issues_on_arrays_ranks_the_suspect_labels():
    import l2b

    alpha = np.array([0.5, 0.0, 0.1, 0.9, 0.0])
    beta = np.array([0.5, 0.8, 0.9, 0.1, 0.0])
    # trust alpha/(alpha+beta): 0.5, 0.0, 0.1, 0.9, 0 (no weight at all) -> scores 0.5, 1, 0.9, 0.1, 1
    labels = np.zeros(5, dtype=np.int64)
    assert l2b.find_label_issues(labels, alpha=alpha, beta=beta).tolist() == [1, 4, 2]
    assert l2b.find_label_issues(labels, alpha=alpha, beta=beta, threshold=0.95).tolist() == [1, 4, 2, 0, 3]
    with pytest.warns(DeprecationWarning, match="old order"):  # the old positional (alpha, beta) still works
        assert l2b.find_label_issues(alpha, beta).tolist() == [1, 4, 2]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    # cleanlab's order, positional and by keyword; the count (2) is estimated by confident learning
    assert l2b.find_label_issues(np.array([0, 0, 1]), probs).tolist() == [1, 2]
    assert l2b.find_label_issues(labels=np.array([0, 0, 1]), pred_probs=probs).tolist() == [1, 2]
    with pytest.raises(ValueError, match="threshold must be in"):
        l2b.find_label_issues(labels, alpha=alpha, beta=beta, threshold=2.0)


def test_rank_label_issues_aggregates_epochs_breaks_ties_and_suggests_other_labels():
    from l2b.detect import rank_label_issues

    labels = np.array([0, 1, 2, 0])
    # three epochs of weights; sample 3 was not weighted in the first epoch (seen False)
    alpha = np.array([[0.0, 0.2, 0.0, 0.0], [0.0, 0.2, 0.05, 0.3], [0.1, 0.2, 0.0, 0.3]])
    beta = np.array([[0.3, 0.0, 0.3, 0.0], [0.3, 0.0, 0.05, 0.1], [0.1, 0.0, 0.3, 0.1]])
    pseudo = np.array([[1, 1, 0, -1], [1, 1, 2, 0], [0, 1, 1, 0]])
    seen = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=bool)
    assert rank_label_issues(labels, alpha, beta).source == "trust"  # auto, weights only (measured best)
    r = rank_label_issues(labels, alpha, beta, pseudo_labels=pseudo, seen=seen, score="trust-mean")
    # mean trust over the weighted epochs: s0 (0+0+.5)/3, s1 1, s2 (0+.5+0)/3, s3 (.75+.75)/2
    np.testing.assert_allclose(r.score, 1 - np.array([0.5 / 3, 1.0, 0.5 / 3, 0.75]))
    assert r.source == "trust-mean"
    assert r.indices.tolist() == [2, 0]  # s0 and s2 tie; s2 has the lower mean alpha
    # the most frequent OTHER pseudo-label; confidence = its share of the weighted epochs; -1: the
    # pseudo-label never differed from the given label (and no model probabilities were given)
    assert r.suggested.tolist()[:3] == [1, -1, 0]
    np.testing.assert_allclose(r.confidence[:3], [2 / 3, 0.0, 1 / 3])
    last = rank_label_issues(labels, alpha[-1], beta[-1], score="trust")
    np.testing.assert_allclose(last.score, 1 - np.array([0.5, 1.0, 0.0, 0.75]))
    probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.1, 0.4], [0.9, 0.05, 0.05]])
    m = rank_label_issues(labels, pred_probs=probs, threshold=0.5)  # a fixed cut, asked for
    assert m.source == "model" and m.cut == "threshold"
    assert m.indices.tolist() == [0, 2] and m.suggested.tolist() == [1, 0, 0, 1]
    # the default cut: no sample is confidently of another class (s0 reaches no class's threshold)
    calibrated = rank_label_issues(labels, pred_probs=probs)
    assert calibrated.cut == "count" and calibrated.estimated == 0 and calibrated.indices.tolist() == []
    both = rank_label_issues(labels, alpha, beta, pseudo_labels=pseudo, seen=seen, pred_probs=probs)
    assert both.source == "model" and both.suggested.tolist() == [1, 0, 0, 1]  # auto; the model's suggestion
    np.testing.assert_allclose(both.agreement[:3], [2 / 3, 0.0, 1 / 3])  # s2: pseudo 0 in 1 of 3 epochs
    c = rank_label_issues(labels, alpha, beta, pseudo_labels=pseudo, seen=seen, pred_probs=probs, score="combined")
    np.testing.assert_allclose(c.score, 0.5 * (r.score + m.score))
    with pytest.raises(ValueError, match="needs the weights"):
        rank_label_issues(labels, pred_probs=probs, score="trust-mean")


def test_roc_auc_with_many_ties_is_vectorised_and_exact():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 2000).astype(float)
    positive = rng.random(2000) < 0.3
    pos, neg = scores[positive], scores[~positive]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(scores, positive) == pytest.approx(pairwise, abs=1e-12)
