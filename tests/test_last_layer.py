"""The last-layer engine: exact when only the classifier trains, the issue's closed form on a
full model, and clear errors where it cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import l2b
from conftest import make_batches, make_model, twin
from reference import TinyBNCNN, digit_batches

REL = 1e-10
OPTIMIZERS = {
    "plain-lr": None,
    "sgd-momentum-wd-filled": dict(momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov-filled": dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
}


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


def only_classifier_trains(model):
    head, _ = l2b.engines.classifier_layer(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    return model


def models_and_batches(kind):
    if kind == "digits-bn-cnn":
        torch.manual_seed(0)
        (x, y, x_val, y_val), = digit_batches(n=32, m=16, steps=1)
        return TinyBNCNN(num_classes=10, width=4).double(), (x, y, x_val, y_val)
    return make_model(kind), make_batches()


@pytest.mark.parametrize("kind", ["mlp", "preact", "digits-bn-cnn"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_last_layer_equals_the_exact_engines_when_only_the_classifier_trains(float64, kind, opt_name):
    model, batches = models_and_batches(kind)
    model = only_classifier_trains(model.double())
    kw = OPTIMIZERS[opt_name]
    opt = None if kw is None else torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, **kw)
    if opt_name.endswith("filled"):  # momentum buffers that shift theta_hat(0)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(batches[0]), batches[1]).backward()
            opt.step()
    step = {"lr": 0.1} if opt is None else {}
    results = {}
    for engine in ("last-layer", "jvp", "unroll"):
        m, o = twin(model, opt)
        results[engine] = (l2b.meta_weights(m, *batches, optimizer=o, engine=engine, **step), m)
    (a, ma) = results["last-layer"]
    for exact in ("jvp", "unroll"):
        b, mb = results[exact]
        assert b.raw_alpha.abs().max() > 1e-8  # not a comparison of zeros
        assert rel_err(a.raw_alpha, b.raw_alpha) <= REL and rel_err(a.raw_beta, b.raw_beta) <= REL, exact
        torch.testing.assert_close(a.val_loss, b.val_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(a.alpha, b.alpha, rtol=1e-9, atol=1e-15)
        for (name, ba), (_, bb) in zip(ma.named_buffers(), mb.named_buffers()):  # BN moved once, alike
            torch.testing.assert_close(ba, bb, rtol=0, atol=1e-13, msg=name)


def test_on_a_full_model_it_is_the_closed_form_of_the_classifier_gradients(float64):
    """raw_alpha_i = lr (1/m) sum_j <p_i - e_(y_i), p'_j - e_(y'_j)> (<h_i, h'_j> + 1), written out."""
    torch.manual_seed(0)
    (x, y, x_val, y_val), = digit_batches(n=24, m=12, steps=1)
    model = TinyBNCNN(num_classes=10, width=4).double().eval()  # eval: features are a function of x
    lr = 0.3
    mw = l2b.meta_weights(model, x, y, x_val, y_val, lr=lr, engine="last-layer")
    with torch.no_grad():
        h, h_val = model.forward_features(x), model.forward_features(x_val)
        p, p_val = torch.softmax(model.linear(h), 1), torch.softmax(model.linear(h_val), 1)
    eye = torch.eye(10, dtype=torch.float64)
    pseudo = p.argmax(1)
    for target, raw in ((y, mw.raw_alpha), (pseudo, mw.raw_beta)):
        want = torch.stack([
            lr / len(y_val) * sum(torch.dot(p[i] - eye[target[i]], p_val[j] - eye[y_val[j]]) * (torch.dot(h[i], h_val[j]) + 1)
                                  for j in range(len(y_val)))
            for i in range(len(y))])
        assert rel_err(raw, want) <= REL
    exact = l2b.meta_weights(model, x, y, x_val, y_val, lr=lr, engine="jvp")
    assert rel_err(mw.raw_alpha, exact.raw_alpha) > 1e-3  # on a full model: an approximation


def test_a_model_without_a_linear_classifier_is_a_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(108, 4), nn.LogSoftmax(dim=1))
    x, y, x_val, y_val = make_batches()
    with pytest.raises(ValueError, match=r"engine='last-layer' needs the classifier to be an nn.Linear.*set `model.head`"):
        l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, engine="last-layer")


def test_logits_that_are_not_the_classifiers_output_are_refused():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(108, 4)

        def forward(self, x):
            return 2.0 * self.head(x.flatten(1))

    x, y, x_val, y_val = make_batches()
    with pytest.raises(ValueError, match="the model's output is not the output of its classifier 'head'"):
        l2b.meta_weights(Scaled(), x, y, x_val, y_val, lr=0.1, engine="last-layer")


def test_a_frozen_classifier_is_a_clear_error():
    model = make_model("mlp")
    for p in l2b.engines.classifier_layer(model)[0].parameters():
        p.requires_grad_(False)
    x, y, x_val, y_val = make_batches()
    with pytest.raises(ValueError, match="is not moved by the virtual step"):
        l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, engine="last-layer")


def test_train_and_the_step_api_take_the_engine(tmp_path):
    from l2b.cli import main as cli_main

    assert cli_main(["train", "--data", "digits", "--model", "mlp", "--width", "16", "--epochs", "1",
                     "--val-per-class", "5", "--engine", "last-layer", "--progress", "none",
                     "--out", str(tmp_path / "r")]) == 0
    model = make_model("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = l2b.L2B(model, opt, engine="last-layer")
    x, y, x_val, y_val = make_batches()
    out = step.step(x, y, x_val, y_val)
    assert torch.isfinite(out.weights.alpha).all() and out.weights.alpha.sum() + out.weights.beta.sum() > 0
