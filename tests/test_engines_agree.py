"""The JVP engine equals the second-order unroll, and both equal brute-force dot products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import l2b
from conftest import make_batches, make_model, twin

REL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


def sgd(model, **kw):
    return torch.optim.SGD(model.parameters(), **{"lr": 0.1, **kw})


def warm_up(model, opt, x, y, steps=2):
    """A few real steps so that momentum buffers hold something."""
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def both_engines(model, opt, batches, engine="jvp", **kw):
    m1, o1 = twin(model, opt)
    m2, o2 = twin(model, opt)
    step = {"lr": 0.1} if opt is None else {}
    a = l2b.meta_weights(m1, *batches, optimizer=o1, engine=engine, **step, **kw)
    b = l2b.meta_weights(m2, *batches, optimizer=o2, engine="unroll", **step, **kw)
    return (a, m1), (b, m2)


OPTIMIZERS = {
    "plain-lr": None,
    "sgd-fresh-momentum-wd": dict(momentum=0.9, weight_decay=5e-4),
    "sgd-momentum-wd-filled": dict(momentum=0.9, weight_decay=5e-4),
    "sgd-nesterov-filled": dict(momentum=0.9, weight_decay=5e-4, nesterov=True),
    "sgd-nesterov-fresh": dict(momentum=0.9, nesterov=True),
    "sgd-dampening-filled": dict(momentum=0.8, dampening=0.3, weight_decay=1e-3),
    "sgd-no-momentum-wd": dict(weight_decay=1e-2),
}


@pytest.mark.parametrize("engine", ["jvp", "jvp-lean"])
@pytest.mark.parametrize("kind", ["mlp", "preact", "frozen"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_jvp_equals_unroll_raw_weights(float64, kind, opt_name, engine):
    model = make_model(kind)
    batches = make_batches()
    kw = OPTIMIZERS[opt_name]
    opt = None if kw is None else sgd(model, **kw)
    if opt_name.endswith("filled"):
        warm_up(model, opt, batches[0], batches[1])
    (a, ma), (b, mb) = both_engines(model, opt, batches, engine)
    assert b.raw_alpha.abs().max() > 1e-6  # the comparison is not between zeros
    assert rel_err(a.raw_alpha, b.raw_alpha) <= REL
    assert rel_err(a.raw_beta, b.raw_beta) <= REL
    assert torch.equal(a.pseudo_labels, b.pseudo_labels)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.val_loss, b.val_loss, rtol=1e-12, atol=0)
    # BatchNorm running statistics move identically (one training forward) in both engines.
    for (name, ba), (_, bb) in zip(ma.named_buffers(), mb.named_buffers()):
        torch.testing.assert_close(ba, bb, rtol=0, atol=1e-13, msg=name)


@pytest.mark.parametrize("normalize", ["sum", "softmax", "sigmoid", "hard"])
@pytest.mark.parametrize("constraint", [None, "alpha=0", "beta=0", "alpha+beta=1"])
def test_jvp_equals_unroll_every_normalisation_and_constraint(float64, normalize, constraint):
    model = make_model("preact")
    batches = make_batches()
    opt = sgd(model, momentum=0.9, weight_decay=5e-4)
    warm_up(model, opt, batches[0], batches[1])
    kw = dict(normalize=normalize, constraint=constraint, temperature=0.01)
    (a, _), (b, _) = both_engines(model, opt, batches, **kw)
    assert rel_err(a.alpha + 1e-30, b.alpha + 1e-30) <= REL or torch.equal(a.alpha, b.alpha)
    assert rel_err(a.beta + 1e-30, b.beta + 1e-30) <= REL or torch.equal(a.beta, b.beta)
    torch.testing.assert_close(a.alpha, b.alpha, rtol=REL, atol=1e-15)
    torch.testing.assert_close(a.beta, b.beta, rtol=REL, atol=1e-15)


def test_engines_agree_with_per_group_learning_rates(float64):
    model = make_model("mlp")
    batches = make_batches()
    first, *rest = list(model.parameters())
    opt = torch.optim.SGD(
        [{"params": [first], "lr": 0.5, "weight_decay": 1e-2}, {"params": rest, "lr": 0.05}],
        lr=0.1, momentum=0.9,
    )
    warm_up(model, opt, batches[0], batches[1])
    (a, _), (b, _) = both_engines(model, opt, batches)
    assert rel_err(a.raw_alpha, b.raw_alpha) <= REL
    assert rel_err(a.raw_beta, b.raw_beta) <= REL


def test_engines_agree_with_custom_per_sample_loss(float64):
    model = make_model("preact")
    batches = make_batches()

    def smoothed_ce(logits, targets):
        return F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)

    (a, _), (b, _) = both_engines(model, None, batches, loss_fn=smoothed_ce)
    assert rel_err(a.raw_alpha, b.raw_alpha) <= REL
    assert rel_err(a.raw_beta, b.raw_beta) <= REL


def _per_sample_grad(model, names, params, x_i, y_i):
    logits = functional_call(model, dict(zip(names, params)), (x_i[None],))
    return torch.autograd.grad(F.cross_entropy(logits, y_i[None]), params)


@pytest.mark.parametrize("use_optimizer", [False, True])
def test_jvp_weights_equal_brute_force_dot_products(float64, use_optimizer):
    """raw_alpha_i = lambda <grad G(theta_hat(0)), grad f_i(theta)>, one sample at a time."""
    model = make_model("mlp")
    x, y, x_val, y_val = make_batches()
    lr, mu, wd = 0.1, 0.9, 5e-4
    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach().clone() for p in model.parameters()]
    if use_optimizer:
        opt = sgd(model, lr=lr, momentum=mu, weight_decay=wd)
        warm_up(model, opt, x, y, steps=1)
        theta = [p.detach().clone() for p in model.parameters()]
        bufs = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
        # theta_hat(0): the optimizer's step with a zero loss gradient.
        theta_hat = [t - lr * (mu * b + wd * t) for t, b in zip(theta, bufs)]
        mw = l2b.meta_weights(model, x, y, x_val, y_val, optimizer=opt)
    else:
        theta_hat = theta
        mw = l2b.meta_weights(model, x, y, x_val, y_val, lr=lr)
    th = [t.clone().requires_grad_() for t in theta_hat]
    val_logits = functional_call(model, dict(zip(names, th)), (x_val,))
    v = torch.autograd.grad(F.cross_entropy(val_logits, y_val), th)
    params = [t.clone().requires_grad_() for t in theta]
    pseudo = functional_call(model, dict(zip(names, theta)), (x,)).argmax(1)
    for i in range(len(x)):
        gf = _per_sample_grad(model, names, params, x[i], y[i])
        gg = _per_sample_grad(model, names, params, x[i], pseudo[i])
        expect_a = lr * sum((a * b).sum() for a, b in zip(v, gf))
        expect_b = lr * sum((a * b).sum() for a, b in zip(v, gg))
        assert abs(mw.raw_alpha[i].item() - expect_a.item()) <= REL * abs(expect_a.item()) + 1e-15
        assert abs(mw.raw_beta[i].item() - expect_b.item()) <= REL * abs(expect_b.item()) + 1e-15


def test_lean_jvp_sees_the_same_dropout_masks_as_the_real_forward(float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(108, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
        torch.nn.Linear(32, 4),
    )
    batches = make_batches()
    (m1, _), (m2, _) = twin(model), twin(model)
    torch.manual_seed(5)
    a = l2b.meta_weights(m1, *batches, lr=0.1, engine="jvp")
    torch.manual_seed(5)
    b = l2b.meta_weights(m2, *batches, lr=0.1, engine="jvp-lean")
    assert torch.equal(a.logits, b.logits)
    torch.testing.assert_close(b.raw_alpha, a.raw_alpha, rtol=1e-12, atol=1e-15)
