"""When a model begins to memorise its labels: the rule (l2b.memorisation) and the model the
trainer keeps from before (early_model.pt)."""

from __future__ import annotations

import json

import pytest
import torch

from l2b.loop import fit_sample
from l2b.memorisation import EARLY_SLACK, before_memorising, early_epoch, fit_gaps
from l2b.rundir import load_checkpoint
from l2b.trainer import TrainConfig, train


def test_early_epoch_is_the_last_whose_gap_stays_near_the_lowest_so_far():
    # gap = fit - held: low while the model learns what the labels share, rising as it fits wrong ones
    assert early_epoch([0.0, -0.05, -0.02, 0.01, -0.04, 0.08]) == 4
    assert early_epoch([-0.10, -0.12, -0.08, -0.02, 0.05]) == 2  # -0.08 is within 0.05 of -0.12; -0.02 is not
    assert early_epoch([0.02, 0.01, 0.0]) == 2  # never rose: the last epoch
    assert early_epoch([None, None]) == -1 and early_epoch([]) == -1  # no held-out clean set measured
    assert early_epoch([None, -0.1, float("nan"), -0.06]) == 3
    # each epoch is judged on the epochs up to it, as the trainer judges them while it trains
    assert early_epoch([0.3, 0.2, 0.1, 0.0]) == 3 and before_memorising(0.0 + EARLY_SLACK, 0.0)
    assert not before_memorising(0.0 + EARLY_SLACK + 1e-9, 0.0)


def test_fit_gaps_read_the_history_in_percent():
    rows = [{"train_fit": 60.0, "val_acc": 70.0}, {"train_fit": None, "val_acc": 71.0}, {"val_acc": 72.0}]
    assert fit_gaps(rows) == [pytest.approx(-0.10), None, None]


def test_the_fit_sample_is_every_sample_or_a_fixed_draw(monkeypatch):
    import l2b.loop
    from l2b.data.batches import TensorData

    data = TensorData(torch.arange(120, dtype=torch.uint8).reshape(30, 1, 2, 2), torch.arange(30) % 3, "cpu",
                      torch.zeros(1), torch.ones(1), {"crop_padding": 0, "flip": False})
    assert fit_sample(data, seed=0) is data
    monkeypatch.setattr(l2b.loop, "FIT_SAMPLES", 10)
    a, b = fit_sample(data, seed=0), fit_sample(data, seed=0)
    assert len(a) == 10 and torch.equal(a.y, b.y) and torch.equal(a.x, b.x)


def test_the_trainer_keeps_the_model_of_the_last_epoch_before_memorising(tmp_path):
    """CE on 40%-noisy digits without weight decay memorises its labels; each epoch logs how often
    the model agrees with them (train_fit), metrics.json names the early epoch the rule picks from
    that history, and early_model.pt holds exactly the weights of that epoch (a run stopped there
    has them in its checkpoint)."""
    cfg = TrainConfig(data="digits", model="mlp", width=128, method="ce", epochs=80, batch_size=64, lr=0.1,
                      weight_decay=0.0, val_per_class=10, noise="symmetric:0.4", out=str(tmp_path / "full"),
                      progress="none", threads=1)
    metrics = train(cfg)
    history = metrics["history"]
    assert all(0.0 <= row["train_fit"] <= 100.0 for row in history)
    assert history[-1]["train_fit"] - history[-1]["val_acc"] > 10.0  # memorised: agrees with its wrong labels too
    early = metrics["early_epoch"]
    assert early == early_epoch(fit_gaps(history)) and 0 <= early < len(history) - 1
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["early_epoch"] == early
    train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "stopped")}), stop_after_epoch=early)
    kept = load_checkpoint(tmp_path / "full" / "early_model.pt", "cpu")
    then = load_checkpoint(tmp_path / "stopped" / "checkpoint.pt", "cpu")["model"]
    assert kept.keys() == then.keys() and all(torch.equal(kept[k], then[k]) for k in kept)


def test_a_run_without_a_held_out_clean_set_measures_no_fit(tmp_path):
    metrics = train(TrainConfig(data="digits", model="mlp", width=16, method="ce", epochs=2, noise="symmetric:0.4",
                                val_per_class=None, out=str(tmp_path / "run"), progress="none", threads=1))
    assert [row["train_fit"] for row in metrics["history"]] == [None, None] and metrics["early_epoch"] == -1
    assert not (tmp_path / "run" / "early_model.pt").exists()


def test_a_run_that_trains_on_its_clean_set_measures_no_fit(tmp_path):
    """With the clean set in the training stream its accuracy is no held-out yardstick."""
    metrics = train(TrainConfig(data="digits", model="mlp", width=16, method="ce", epochs=2, noise="symmetric:0.4",
                                val_per_class=5, train_on_clean=True, out=str(tmp_path / "run"), progress="none",
                                threads=1))
    assert [row["train_fit"] for row in metrics["history"]] == [None, None] and metrics["early_epoch"] == -1
    assert not (tmp_path / "run" / "early_model.pt").exists()
