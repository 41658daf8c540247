"""No clean set at hand: a meta set selected from the noisy data (``--meta-set select:KIND``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import l2b
from l2b.cli import main
from l2b.config import TrainConfig
from l2b.trainer import train


def probs_for(true, given, k=4, right=0.7):
    """A model that puts ``right`` on the true class of each sample."""
    p = np.full((len(true), k), (1 - right) / (k - 1))
    p[np.arange(len(true)), true] = right
    return p


def test_each_kind_picks_k_per_class_from_a_models_view():
    true = np.arange(40) % 4
    given = true.copy()
    given[:8] = (given[:8] + 1) % 4  # 8 wrong labels
    probs = probs_for(true, given)
    for kind in ("small-loss", "confident"):
        sel = l2b.select_meta_set(given, probs, per_class=3, kind=kind)
        assert len(sel.indices) == 12 and np.all(np.bincount(given[sel.indices], minlength=4) == 3)
        assert (sel.labels == given[sel.indices]).all() and not sel.short
        assert (given[sel.indices] == true[sel.indices]).all()  # the model disagrees with every wrong label
    sel = l2b.select_meta_set(given, probs, per_class=3, kind="pseudo")
    assert (sel.labels == true[sel.indices]).all()  # relabelled with the model's prediction
    losses = np.arange(40, dtype=float)  # small-loss from given losses: the first of each class
    sel = l2b.select_meta_set(given, losses=losses, per_class=1, kind="small-loss")
    assert sorted(sel.indices.tolist()) == sorted(int(np.flatnonzero(given == c)[0]) for c in range(4))


def test_a_short_class_gives_what_it_has_and_an_empty_one_is_named():
    given = np.array([0] * 10 + [1] * 2 + [2] * 10)
    probs = probs_for(given, given, k=3)
    sel = l2b.select_meta_set(given, probs, per_class=5, kind="small-loss", class_names=["cat", "dog", "fox"])
    assert sel.short == {1: 2} and len(sel.indices) == 12
    given[10:12] = 0  # no sample labelled "dog" any more
    with pytest.raises(ValueError, match=r"class 'dog' has no selectable sample; give a smaller per-class size "
                                         r"\(--meta-set-size\), another kind, or a verified clean set"):
        l2b.select_meta_set(given, probs, per_class=5, kind="small-loss", class_names=["cat", "dog", "fox"])



@pytest.mark.parametrize("kwargs, expected", [
    (dict(losses=np.ones(3)), r"losses must be one finite number per sample, shape \(22,\); got shape \(3,\)"),
    (dict(losses=np.full(22, np.nan)), r"got shape \(22,\), with NaN or inf"),
    (dict(losses=np.ones((22, 2))), r"got shape \(22, 2\)"),
    (dict(per_class=2.5), r"per_class must be a whole number, at least 1; got 2.5"),
    (dict(class_names=["cat"]), r"class_names names 1 classes, but there are 3"),
], ids=["losses length", "NaN losses", "2-D losses", "fractional per_class", "too few class names"])
def test_select_meta_set_refuses_inputs_that_do_not_fit(kwargs, expected):
    given = np.array([0] * 10 + [1] * 2 + [2] * 10)
    with pytest.raises(ValueError, match=expected):
        l2b.select_meta_set(given, probs_for(given, given, k=3), **{"per_class": 2, **kwargs})


BASE = dict(data="digits", model="mlp", width=32, epochs=4, warmup_epochs=1, method="l2b", val_per_class=None,
            progress="none", batch_size=64)


@pytest.mark.parametrize("kind", ["small-loss", "confident", "pseudo"])
def test_training_with_a_selected_meta_set_records_it_and_reports_the_last_epoch(tmp_path, kind):
    out = tmp_path / kind
    cfg = dict(BASE, epochs=5, warmup_epochs=2, lr=0.2)  # a model that predicts every class by then
    m = train(TrainConfig(**cfg, meta_set=f"select:{kind}", meta_set_size=5, meta_refresh=2, out=str(out)))
    record = json.loads((out / "meta_set.json").read_text())["selections"]
    assert [r["epoch"] for r in record] == [2, 4]  # after the warm-up, then every 2 epochs
    assert all(r["size"] == 50 and 0.5 < r["purity"] <= 1.0 for r in record)
    assert "biased" in m["model_selection"] and m["meta_set"][0]["purity"] == record[0]["purity"]


def test_a_selected_meta_set_resumes_bit_identically_between_refreshes(tmp_path):
    cfg = dict(BASE, epochs=5, meta_set="select:small-loss", meta_set_size=5, meta_refresh=3, meta_set_leaves=True)
    train(TrainConfig(**cfg, out=str(tmp_path / "whole")))
    cut = TrainConfig(**cfg, out=str(tmp_path / "cut"))
    train(cut, stop_after_epoch=2)  # after the first selection (epoch 1), before the refresh (epoch 4)
    train(cut, resume=True)
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    w = np.load(tmp_path / "whole" / "weights.npz")
    chosen = json.loads((tmp_path / "whole" / "meta_set.json").read_text())["selections"][-1]["indices"]
    assert not w["seen_history"][-1][chosen].any()  # the selected samples left the noisy stream
    assert w["seen_history"][-1].sum() == len(w["seen_history"][-1]) - len(chosen)


def test_a_given_clean_set_is_said_to_be_unused_and_bad_settings_are_one_line(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "2", "--warmup-epochs", "1",
            "--meta-set", "select:small-loss", "--progress", "lines", "--out", str(tmp_path / "run")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "replaces it: it is used for nothing" in captured.err
    assert "meta set select:small-loss from the noisy data after 1 warm-up epoch(s)" in captured.out
    for extra, expected in ((["--warmup-epochs", "0"], "give --warmup-epochs 1 or more"),
                            (["--method", "ce"], "method 'ce' takes no clean batch per step"),
                            (["--meta-set", "select:biggest"], "choose clean or select:KIND")):
        assert main(argv + extra + ["--overwrite"]) == 2
        assert expected in capsys.readouterr().err


def test_the_selected_samples_leave_the_noisy_stream_by_default_and_stay_when_asked(tmp_path, capsys):
    """Leaving measured a little better (benchmarks/no_clean_set.py), so it is the default;
    ``--meta-set-leaves no`` keeps them in; asking for it with the verified clean set is an error."""
    seen = {}
    for name, extra in (("default", []), ("stays", ["--meta-set-leaves", "no"])):
        out = tmp_path / name
        assert main(["train", "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "2",
                     "--warmup-epochs", "1", "--meta-set", "select:small-loss", "--meta-set-size", "5",
                     "--progress", "none", "--out", str(out), *extra]) == 0
        record = json.loads((out / "meta_set.json").read_text())["selections"][-1]
        seen[name] = np.load(out / "weights.npz")["seen_history"][-1][record["indices"]]
        assert record["leaves_stream"] == (name == "default")
    assert not seen["default"].any() and seen["stays"].all()
    capsys.readouterr()
    assert main(["train", "--data", "digits", "--epochs", "1", "--meta-set-leaves",
                 "--out", str(tmp_path / "clean")]) == 2
    assert "apply to --meta-set select:KIND" in capsys.readouterr().err


def test_a_selected_meta_set_is_selected_again_every_fifth_of_the_run_by_default():
    """Refreshed every 10 of 50 epochs beat one selection at every noise setting
    (benchmarks/no_clean_set.py), so a fifth of the epochs is the default; 0 selects once."""
    assert TrainConfig(meta_set="select:confident", epochs=50).meta_refresh == 10
    assert TrainConfig(meta_set="select:confident", epochs=3).meta_refresh == 1
    assert TrainConfig(meta_set="select:confident", epochs=50, meta_refresh=0).meta_refresh == 0
    with pytest.raises(ValueError, match="apply to --meta-set select:KIND"):
        TrainConfig(meta_refresh=3).validate()
    # without a selected meta set they hold 0 / False, what every run has recorded: the cells and
    # run directories of earlier versions still compare equal (resume, grid cells)
    from dataclasses import asdict

    from l2b.rundir import config_differences

    earlier = dict(asdict(TrainConfig()), meta_refresh=0, meta_set_leaves=False)
    assert not config_differences(earlier, asdict(TrainConfig()), asdict(TrainConfig()))
