"""bf16 autocast: the meta-gradient stays close to float32 on a real batch (CPU sanity check)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import l2b
from l2b.data import load_dataset, normalize_batch
from l2b.models import create_model


def _cpu_bf16_autocast_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.nn.functional.linear(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    except RuntimeError:
        return False


@pytest.mark.skipif(not _cpu_bf16_autocast_works(), reason="no bf16 autocast on this CPU build")
@pytest.mark.parametrize("engine", ["jvp", "jvp-lean"])
def test_bf16_meta_gradient_agrees_with_float32_on_real_digits(engine):
    torch.manual_seed(0)
    ds = load_dataset("digits")
    mean, std = ds.mean_std()
    x, y = normalize_batch(ds.x_train, mean, std), ds.y_train
    model = create_model("small-cnn", num_classes=10, in_channels=1, width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(40):  # a briefly trained model, not a random one
        idx = torch.randint(0, len(x), (64,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    batch = (x[:128], y[:128], x[600:728], y[600:728])
    ref = l2b.meta_weights(copy.deepcopy(model), *batch, lr=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mw = l2b.meta_weights(copy.deepcopy(model), *batch, lr=0.1, engine=engine)
    assert mw.logits.dtype == torch.bfloat16
    for name in ("raw_alpha", "raw_beta", "alpha", "beta"):
        a, b = getattr(mw, name).double(), getattr(ref, name).double()
        rel = ((a - b).norm() / b.norm()).item()
        assert rel < 0.05, (name, rel)
    assert (mw.pseudo_labels == ref.pseudo_labels).float().mean() > 0.95
