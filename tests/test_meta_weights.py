"""Behaviour of meta_weights, bootstrap_loss and the L2B step helper."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import l2b
from l2b.normalize import hard_normalize, normalize_weights, sigmoid_normalize, sum_normalize
from conftest import make_batches, make_model, twin


@pytest.mark.parametrize("engine", ["jvp", "jvp-lean", "unroll"])
def test_running_stats_move_exactly_as_one_training_forward(float64, engine):
    model = make_model("preact")
    x, y, x_val, y_val = make_batches()
    x_val = x_val * 7 + 3  # a validation batch whose statistics would show if it leaked
    reference = copy.deepcopy(model)
    reference(x)  # one ordinary training forward
    l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, engine=engine)
    bufs = dict(model.named_buffers())
    for name, ref in reference.named_buffers():
        assert torch.equal(bufs[name], ref), name
    assert bufs["layer4.1.bn2.num_batches_tracked"].item() == 1


@pytest.mark.parametrize("engine", ["jvp", "jvp-lean", "unroll"])
def test_eval_mode_uses_running_stats_and_moves_nothing(float64, engine):
    model = make_model("preact")
    x, y, x_val, y_val = make_batches()
    model(x)  # give the running statistics non-default values
    model.eval()
    before = copy.deepcopy(model)
    mw = l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, engine=engine)
    for (name, b), (_, a) in zip(before.named_buffers(), model.named_buffers()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(mw.logits, before(x), rtol=0, atol=1e-12)


def test_logits_carry_the_graph_of_an_ordinary_forward(float64):
    model = make_model("preact")
    x, y, x_val, y_val = make_batches()
    ref = copy.deepcopy(model)
    mw = l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1)
    ref_logits = ref(x)
    torch.testing.assert_close(mw.logits, ref_logits, rtol=0, atol=1e-13)
    F.cross_entropy(mw.logits, y).backward()
    F.cross_entropy(ref_logits, y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14, msg=name)
    assert torch.equal(mw.pseudo_labels, ref_logits.argmax(1))


def test_meta_step_leaves_no_gradients_behind(float64):
    model = make_model("mlp")
    l2b.meta_weights(model, *make_batches(), lr=0.1)
    assert all(p.grad is None for p in model.parameters())


def test_bootstrap_loss_is_weighted_sum_of_both_cross_entropies(float64):
    model = make_model("mlp")
    x, y, x_val, y_val = make_batches()
    mw = l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1)
    f = F.cross_entropy(mw.logits, y, reduction="none")
    g = F.cross_entropy(mw.logits, mw.logits.argmax(1), reduction="none")
    expect = sum(a * fi + b * gi for a, b, fi, gi in zip(mw.alpha, mw.beta, f, g))
    torch.testing.assert_close(l2b.bootstrap_loss(mw, y), expect, rtol=1e-14, atol=0)


@pytest.mark.parametrize("virtual_step", ["optimizer", "sgd"])
def test_l2b_step_equals_manual_algorithm_1_step(float64, virtual_step):
    model = make_model("preact")
    x, y, x_val, y_val = make_batches()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    helper = l2b.L2B(model, opt, virtual_step=virtual_step, clip_grad_norm=0.25)
    manual_model, manual_opt = twin(model, opt)
    for _ in range(3):
        out = helper.step(x, y, x_val, y_val)
        # Algorithm 1 by hand: weights (lines 4-11), weighted loss (12), real step (13).
        if virtual_step == "optimizer":
            mw = l2b.meta_weights(manual_model, x, y, x_val, y_val, optimizer=manual_opt)
        else:
            mw = l2b.meta_weights(manual_model, x, y, x_val, y_val, lr=0.1)
        loss = l2b.bootstrap_loss(mw, y)
        manual_opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(manual_model.parameters(), 0.25)
        manual_opt.step()
        assert torch.equal(out.loss, loss.detach())
        assert torch.equal(out.weights.alpha, mw.alpha)
    for p, q in zip(model.parameters(), manual_model.parameters()):
        assert torch.equal(p, q)


def test_l2b_training_lowers_validation_loss(float64):
    """A few L2B steps on a separable problem reduce the clean loss (Theorem 1's direction)."""
    torch.manual_seed(0)
    centers = torch.randn(3, 10) * 3
    y = torch.randint(0, 3, (64,))
    x = centers[y] + torch.randn(64, 10)
    y_val = torch.arange(3).repeat(4)
    x_val = centers[y_val] + torch.randn(12, 10)
    noisy = y.clone()
    noisy[:20] = (noisy[:20] + 1) % 3
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = l2b.L2B(model, opt, virtual_step="sgd")
    before = F.cross_entropy(model(x_val), y_val).item()
    for _ in range(30):
        out = step.step(x, noisy, x_val, y_val)
    after = F.cross_entropy(model(x_val), y_val).item()
    assert after < 0.5 * before
    # the flipped samples get less weight on their given label than the clean ones
    assert out.weights.alpha[:20].mean() < 0.5 * out.weights.alpha[20:].mean()


def test_all_zero_weights_give_zero_loss_and_are_reported(float64):
    model = make_model("mlp")
    x, y, x_val, y_val = make_batches()
    mw = l2b.meta_weights(model, x, y, x_val, y_val, lr=0.0)  # lr = 0: every raw weight is 0
    assert torch.equal(mw.raw_alpha, torch.zeros(8))
    assert mw.all_zero
    assert l2b.bootstrap_loss(mw, y).item() == 0.0
    # a step with all-zero weights still applies weight decay through the optimizer
    opt = torch.optim.SGD(model.parameters(), lr=0.0, weight_decay=0.1)
    out = l2b.L2B(model, opt).step(x, y, x_val, y_val)
    assert out.all_zero and out.loss.item() == 0.0


def test_negative_raw_weights_clamp_to_zero_under_sum():
    w = sum_normalize(torch.tensor([-1.0, -2.0, -0.5]))
    assert torch.equal(w, torch.zeros(3))
    w = sum_normalize(torch.tensor([-1.0, 3.0, 1.0]))
    torch.testing.assert_close(w, torch.tensor([0.0, 0.75, 0.25]))


def test_normalisations_match_their_equations():
    a, b = torch.tensor([0.2, -0.1, 0.0]), torch.tensor([0.4, 0.0, -0.3])
    w = torch.cat([a, b])
    alpha, beta = normalize_weights(a, b, normalize="softmax", temperature=10.0)
    e = torch.exp(w / 10.0)
    torch.testing.assert_close(torch.cat([alpha, beta]), e / e.sum())
    alpha, beta = normalize_weights(a, b, normalize="sigmoid")
    s = torch.sigmoid(w)
    torch.testing.assert_close(torch.cat([alpha, beta]), s / s.sum())
    assert torch.isclose(sigmoid_normalize(torch.zeros(4)), torch.full((4,), 0.25)).all()
    hard = hard_normalize(w)
    soft = torch.softmax(w, 0)
    torch.testing.assert_close(hard, torch.where(soft > 1 / 6, soft, torch.zeros(6)))
    # softmax exceeds 1/k exactly where w exceeds log-mean-exp: here only 0.2 and 0.4 survive
    assert hard.nonzero().flatten().tolist() == [0, 3]
    hard = hard_normalize(w, threshold=0.0)
    torch.testing.assert_close(hard, soft)


def test_constraints_shape_the_weights():
    a, b = torch.tensor([0.2, -0.1, 0.3, 0.0]), torch.tensor([0.4, 0.1, -0.3, 0.0])
    alpha, beta = normalize_weights(a, b, constraint="beta=0")
    assert torch.equal(beta, torch.zeros(4))
    torch.testing.assert_close(alpha, torch.tensor([0.4, 0.0, 0.6, 0.0]))
    alpha, beta = normalize_weights(a, b, constraint="alpha=0")
    assert torch.equal(alpha, torch.zeros(4))
    torch.testing.assert_close(beta, torch.tensor([0.8, 0.2, 0.0, 0.0]))
    alpha, beta = normalize_weights(a, b, constraint="alpha+beta=1")
    torch.testing.assert_close(alpha + beta, torch.full((4,), 0.25))
    torch.testing.assert_close(alpha, torch.tensor([1 / 3, 0.0, 1.0, 0.5]) / 4)


def test_batch_of_one_and_validation_larger_than_training(float64):
    model = make_model("mlp")
    x, y, x_val, y_val = make_batches(n=1, m=32)
    (m1, _), (m2, _) = twin(model), twin(model)
    a = l2b.meta_weights(m1, x, y, x_val, y_val, lr=0.1)
    b = l2b.meta_weights(m2, x, y, x_val, y_val, lr=0.1, engine="unroll")
    assert a.alpha.shape == (1,)
    torch.testing.assert_close(a.raw_alpha, b.raw_alpha, rtol=1e-10, atol=0)
    # one sample: alpha and beta share the whole weight (they are equal when pseudo == label)
    assert a.alpha.item() + a.beta.item() == pytest.approx(1.0) or a.all_zero


def test_float32_and_float64_models_give_matching_weights():
    m64 = make_model("preact").double()
    m32 = copy.deepcopy(m64).float()
    x, y, x_val, y_val = make_batches()
    a = l2b.meta_weights(m64, x.double(), y, x_val.double(), y_val, lr=0.1)
    b = l2b.meta_weights(m32, x.float(), y, x_val.float(), y_val, lr=0.1)
    assert a.raw_alpha.dtype == torch.float64 and b.raw_alpha.dtype == torch.float32
    torch.testing.assert_close(b.raw_alpha.double(), a.raw_alpha, rtol=1e-3, atol=1e-6)


def test_bad_arguments_name_the_fix():
    model = make_model("mlp")
    x, y, x_val, y_val = make_batches()
    with pytest.raises(ValueError, match="exactly one of lr="):
        l2b.meta_weights(model, x, y, x_val, y_val)
    with pytest.raises(TypeError, match="Pass lr=... instead"):
        l2b.meta_weights(model, x, y, x_val, y_val, optimizer=torch.optim.RMSprop(model.parameters()))
    rmsprop = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    with pytest.raises(TypeError, match="for torch.optim.SGD, Adam and AdamW; got RMSprop: pass virtual_step='sgd'"):
        l2b.L2B(model, rmsprop)  # said when built, in the drop-in's own terms
    step = l2b.L2B(model, rmsprop, virtual_step="sgd")  # the remedy it names works: RMSprop takes the real step
    before = [p.detach().clone() for p in model.parameters()]
    assert torch.isfinite(step.step(x, y, x_val, y_val).loss)
    assert rmsprop.state and any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="unknown normalize='max'.*'sum'"):
        l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, normalize="max")
    with pytest.raises(ValueError, match="unknown constraint"):
        l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, constraint="beta=1")
    with pytest.raises(ValueError, match="unknown engine"):
        l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, engine="hessian")
    with pytest.raises(ValueError, match="8 inputs but 7 labels"):
        l2b.meta_weights(model, x, y[:7], x_val, y_val, lr=0.1)
    with pytest.raises(TypeError, match="integer class indices"):
        l2b.meta_weights(model, x, y.float(), x_val, y_val, lr=0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        l2b.meta_weights(model, x, y, x_val, y_val, lr=0.1, normalize="softmax", temperature=0)
    other = make_model("mlp")
    with pytest.raises(ValueError, match="not in the model"):
        l2b.meta_weights(model, x, y, x_val, y_val, optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


@pytest.mark.parametrize("engine", ["jvp-lean", "jvp", "unroll", "last-layer"])
def test_a_label_outside_the_models_classes_names_its_batch_and_position(engine):
    model = make_model("mlp")
    x, y, x_val, y_val = make_batches()
    k = model(x[:1]).shape[1]
    y_bad, val_bad = y.clone(), y_val.clone()
    y_bad[3], val_bad[1] = -1, k
    with pytest.raises(ValueError, match=rf"training batch \(x, y\): labels\[3\] = -1 is not one of the model's {k} "):
        l2b.meta_weights(model, x, y_bad, x_val, y_val, lr=0.1, engine=engine)
    with pytest.raises(ValueError, match=rf"validation batch \(x_val, y_val\): labels\[1\] = {k} is not one of"):
        l2b.meta_weights(model, x, y, x_val, val_bad, lr=0.1, engine=engine)


class _PairOut(nn.Module):
    """A model that returns (logits, features), or its logits' first column only."""

    def __init__(self, pair: bool):
        super().__init__()
        self.pair, self.body, self.fc = pair, nn.Flatten(), nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        logits = self.fc(self.body(x))
        return (logits, x) if self.pair else logits[:, 0]


@pytest.mark.parametrize("engine", ["jvp-lean", "jvp", "unroll", "last-layer"])
@pytest.mark.parametrize("pair", [True, False], ids=["tuple", "one-column"])
def test_a_model_that_does_not_return_logits_is_named_not_a_torch_error(engine, pair):
    x, y, x_val, y_val = make_batches()
    got = "a tuple" if pair else r"a tensor of shape \(1,\) for one sample"
    error, message = (ValueError, "the model's output is not the output of its classifier 'fc'") \
        if engine == "last-layer" else (TypeError, f"the model returned {got}; meta_weights needs its logits")
    with pytest.raises(error, match=message):
        l2b.meta_weights(_PairOut(pair), x, y.clamp(max=0), x_val, y_val.clamp(max=0), lr=0.1, engine=engine)


@pytest.mark.parametrize("engine", ["jvp-lean", "jvp", "unroll", "last-layer"])
def test_a_loss_fn_that_averages_the_batch_is_refused(engine):
    """A mean loss would give every sample the same meta-gradient (and the real step no weights)."""
    x, y, x_val, y_val = make_batches()
    mean_ce = lambda logits, t: F.cross_entropy(logits, t)  # noqa: E731 (reduction="mean")
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per sample, shape \(8,\); got shape \(\): "
                                         r"compute it with reduction='none'"):
        l2b.meta_weights(make_model("mlp"), x, y, x_val, y_val, lr=0.1, engine=engine, loss_fn=mean_ce)
    mw = l2b.meta_weights(make_model("mlp"), x, y, x_val, y_val, lr=0.1, engine=engine)
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per sample"):
        l2b.bootstrap_loss(mw, y, (None, mean_ce))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile imports torch's own deprecated parts
def test_a_model_that_cannot_take_virtual_parameters_is_refused_when_built():
    model = make_model("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"nn.DataParallel cannot be called with virtual parameters: pass model.module"):
        l2b.L2B(nn.DataParallel(model), opt)
    with pytest.raises(ValueError, match=r"a torch.compile'd model cannot be called with virtual parameters: pass the "
                                         r"module itself \(model._orig_mod\)"):
        l2b.L2B(torch.compile(model), opt)
    x, y, x_val, y_val = make_batches()
    with pytest.raises(ValueError, match=r"nn.DataParallel cannot be called"):
        l2b.meta_weights(nn.DataParallel(model), x, y, x_val, y_val, lr=0.1)


def test_the_drop_in_step_refuses_an_unknown_engine_or_normalisation_when_built():
    model = make_model("mlp")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown engine='fast'"):
        l2b.L2B(model, opt, engine="fast")
    with pytest.raises(ValueError, match="unknown normalize='max'"):
        l2b.L2B(model, opt, normalize="max")
    for clip in (-1.0, 0.0, float("nan")):  # torch would scale the gradient by a negative factor: uphill
        with pytest.raises(ValueError, match=f"clip_grad_norm must be a finite number > 0, or None .*got {clip}"):
            l2b.L2B(model, opt, clip_grad_norm=clip)


class _NoJvpRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0)


class _NoJvpModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3 * 6 * 6, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(_NoJvpRelu.apply(self.a(x.flatten(1))))


def test_op_without_forward_ad_names_the_unroll_remedy(float64):
    model = _NoJvpModel()
    batches = make_batches()
    with pytest.raises(l2b.ForwardADUnsupported, match="engine='unroll'"):
        l2b.meta_weights(model, *batches, lr=0.1)
    mw = l2b.meta_weights(model, *batches, lr=0.1, engine="unroll")
    assert mw.raw_alpha.abs().max() > 0
