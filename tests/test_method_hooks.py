"""A new method in one file, through the hooks alone: no edit to l2b/ is needed for it to train,
checkpoint, resume bit-identically, run in ``compare``, and change its data as each epoch begins."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from l2b.cli import main
from l2b.config import TrainConfig
from l2b.methods import METHODS, DataNeeds, EpochContext, Method, StepOutput, register
from l2b.methods.options import option
from l2b.trainer import train


@dataclass
class HalfOptions:
    clean_weight: float = option(0.5, "weight of the clean batch's loss", check=lambda v: v >= 0)


class SmallLossPlusClean(Method):
    """Cross-entropy on the smaller-loss half of each batch, plus the clean batch's loss."""

    name = "test-small-loss-plus-clean"
    Options = HalfOptions
    checkpointed = ("steps",)

    @classmethod
    def needs(cls, options: dict) -> DataNeeds:
        return DataNeeds(clean=True, clean_per_step=True)

    @classmethod
    def default_clip(cls, options: dict) -> float | None:
        return 1.0

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.steps = torch.zeros((), dtype=torch.int64)

    def loss(self, batch) -> StepOutput:
        self.steps += 1
        per_sample = F.cross_entropy(self.model(batch.x), batch.y, reduction="none")
        keep = per_sample <= per_sample.median()
        clean = F.cross_entropy(self.model(batch.x_val), batch.y_val)
        total = per_sample[keep].mean() + self.options.clean_weight * clean
        return StepOutput(total, alpha=keep.float(), beta=torch.zeros_like(per_sample))


class RotatingMetaSet(Method):
    """Each epoch, a clean set taken from the training samples, relabelled to one class that
    changes with the epoch: the steps must see exactly that set."""

    name = "test-rotating-meta-set"
    checkpointed = ("seen",)

    @classmethod
    def needs(cls, options: dict) -> DataNeeds:
        return DataNeeds(clean=True, clean_per_step=True)

    def __init__(self, model, optimizer, **options) -> None:
        super().__init__(model, optimizer, **options)
        self.label = None
        self.seen = torch.zeros(10, dtype=torch.int64)  # clean batches seen per label

    def on_epoch_start(self, epoch: int, ctx: EpochContext) -> None:
        self.label = epoch % 10
        picked = torch.arange(epoch, epoch + 40)  # 40 training samples, another window each epoch
        ctx.set_clean(ctx.take(picked, labels=torch.full((40,), self.label)))

    def loss(self, batch) -> StepOutput:
        assert (batch.y_val == self.label).all(), "the steps must read the clean set of this epoch"
        self.seen[self.label] += 1
        loss = F.cross_entropy(self.model(batch.x), batch.y) + 0.1 * F.cross_entropy(self.model(batch.x_val), batch.y_val)
        return StepOutput(loss)


@pytest.fixture
def registered():
    added = [register(SmallLossPlusClean), register(RotatingMetaSet)]
    yield
    for cls in added:
        METHODS.pop(cls.name)


BASE = dict(data="digits", model="mlp", width=16, epochs=3, batch_size=64, val_per_class=5, progress="none")


def final_state(out):
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    return ck["model"], ck["method"], json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("method", ["test-small-loss-plus-clean", "test-rotating-meta-set"])
def test_a_method_of_a_test_file_trains_and_resumes_bit_identically(tmp_path, registered, method):
    whole = TrainConfig(**BASE, method=method, out=str(tmp_path / "whole"))
    train(whole)
    cut = TrainConfig(**BASE, method=method, out=str(tmp_path / "cut"))
    train(cut, stop_after_epoch=0)
    train(cut, resume=True)
    (m1, s1, r1), (m2, s2, r2) = final_state(tmp_path / "whole"), final_state(tmp_path / "cut")
    for k in m1:
        assert torch.equal(m1[k], m2[k]), k
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert r1["test_acc_last"] == r2["test_acc_last"]
    if method == "test-rotating-meta-set":  # every epoch's steps read that epoch's clean set
        seen = s1["seen"]
        assert seen[0] > 0 and seen[1] > 0 and seen[2] > 0 and seen[3:].sum() == 0
    else:
        saved = json.loads((tmp_path / "whole" / "config.json").read_text())
        assert saved["resolved"]["clip_grad_norm"] == 1.0  # the method's declared default clip
        assert s1["steps"] == 3 * 20  # 1247 training samples, batches of 64, 3 epochs


def test_a_method_of_a_test_file_runs_in_compare_with_its_declared_options(tmp_path, registered, capsys):
    out = tmp_path / "grid"
    assert main(["compare", "--methods", "test-small-loss-plus-clean,ce", "--noise", "symmetric:0.4", "--seeds", "1",
                 "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "1", "--val-per-class", "5",
                 "--clean-weight", "0.25", "--out", str(out)]) == 0
    assert "test-small-loss-plus-clean" in (out / "summary.md").read_text()
    saved = json.loads((out / "test-small-loss-plus-clean" / "symmetric_0.4" / "seed0" / "config.json").read_text())
    assert saved["resolved"]["method_options"] == {"clean_weight": 0.25}
