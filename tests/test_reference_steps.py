"""Each baseline against its reference code: the reference's own training step, transcribed here
(its loss expression, optimiser and meta step, a second-order unroll where the reference uses
one), run for two steps in float64 on a tiny BatchNorm CNN and real digits; the library's method
must land on the same parameters to 1e-8 relative.

References (docs/methods.md): xjtushujun/meta-weight-net MW-Net.py and
train_WRN-28-10_Meta_PGC.py; microsoft/MLC mlc.py, meta_models.py, main.py; mmazeika/glc
CIFAR/train_ours.py; uber-research/learning-to-reweight-examples; yuyinzhou/L2B main.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from l2b.methods import Batch, create_method
from reference import assert_same_parameters, changed, digit_batches, model_pair


def trainer_step(method, optimizer, batch: Batch) -> None:
    """What l2b's trainer does with a method's loss each step."""
    loss = method.loss(batch).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def batch_of(x, y, xv=None, yv=None) -> Batch:
    return Batch(x, y, torch.arange(len(y)), xv, yv)


# ----------------------------------------------------------------------------- MW-Net


class RefVNet(nn.Module):
    """meta-weight-net's VNet(1, 100, 1): linear1 - ReLU - linear2 - sigmoid."""

    def __init__(self, hidden=100):
        super().__init__()
        self.linear1 = nn.Linear(1, hidden)
        self.linear2 = nn.Linear(hidden, 1)

    def forward(self, x):
        return torch.sigmoid(self.linear2(F.relu(self.linear1(x))))


def ref_mwnet_step(model, vnet, optimizer_model, optimizer_vnet, inputs, targets, inputs_val, targets_val,
                   meta_lr, sum_normalised):
    """One iteration of MW-Net.py's train() (sum_normalised=False) or of
    train_WRN-28-10_Meta_PGC.py's loop (True). meta_model = a copy of model; its update_params is
    param - lr_inner * grad with the graph kept (create_graph=True)."""
    params = dict(model.named_parameters())
    meta_buffers = {k: v.clone() for k, v in model.named_buffers()}  # meta_model's own buffers
    outputs = functional_call(model, (params, meta_buffers), (inputs,))
    cost = F.cross_entropy(outputs, targets, reduction="none")
    cost_v = torch.reshape(cost, (len(cost), 1))
    v_lambda = vnet(cost_v.data)
    if sum_normalised:
        norm_c = torch.sum(v_lambda)
        v_lambda_norm = v_lambda / norm_c if norm_c != 0 else v_lambda
        l_f_meta = torch.sum(cost_v * v_lambda_norm)
    else:
        l_f_meta = torch.sum(cost_v * v_lambda) / len(cost_v)
    grads = torch.autograd.grad(l_f_meta, list(params.values()), create_graph=True)
    new_params = {k: p - meta_lr * g for (k, p), g in zip(params.items(), grads)}
    y_g_hat = functional_call(model, (new_params, meta_buffers), (inputs_val,))
    l_g_meta = F.cross_entropy(y_g_hat, targets_val)
    optimizer_vnet.zero_grad()
    l_g_meta.backward()
    optimizer_vnet.step()

    outputs = model(inputs)
    cost_w = F.cross_entropy(outputs, targets, reduction="none")
    cost_v = torch.reshape(cost_w, (len(cost_w), 1))
    with torch.no_grad():
        w_new = vnet(cost_v)
    if sum_normalised:
        norm_v = torch.sum(w_new)
        w_v = w_new / norm_v if norm_v != 0 else w_new
        loss = torch.sum(cost_v * w_v)
    else:
        loss = torch.sum(cost_v * w_new) / len(cost_v)
    optimizer_model.zero_grad()
    loss.backward()
    optimizer_model.step()


@pytest.mark.parametrize("variant", ["current", "original"])
def test_mwnet_equals_the_reference_step(variant):
    ours, theirs = model_pair()
    original = variant == "original"
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=original)  # the scripts' model optimisers
    opt_ours, opt_theirs = torch.optim.SGD(ours.parameters(), **sgd), torch.optim.SGD(theirs.parameters(), **sgd)
    method = create_method("mwnet", ours, opt_ours, variant=variant)
    method.vnet.double()
    method.meta_opt = type(method.meta_opt)(method.vnet.parameters(), **method.meta_opt.defaults)
    vnet = RefVNet().double()
    with torch.no_grad():
        vnet.linear1.weight.copy_(method.vnet.net[0].weight), vnet.linear1.bias.copy_(method.vnet.net[0].bias)
        vnet.linear2.weight.copy_(method.vnet.net[2].weight), vnet.linear2.bias.copy_(method.vnet.net[2].bias)
    if original:
        opt_vnet = torch.optim.SGD(vnet.parameters(), 1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        opt_vnet = torch.optim.Adam(vnet.parameters(), 1e-3, weight_decay=1e-4)
    assert type(opt_vnet) is type(method.meta_opt)
    assert {k: method.meta_opt.defaults[k] for k in ("lr", "weight_decay")} == {k: opt_vnet.defaults[k] for k in ("lr", "weight_decay")}
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    for x, y, xv, yv in digit_batches():
        ref_mwnet_step(theirs, vnet, opt_theirs, opt_vnet, x, y, xv, yv, 0.1, sum_normalised=original)
        trainer_step(method, opt_ours, batch_of(x, y, xv, yv))
    assert changed(ours, before)
    assert_same_parameters(ours, theirs)
    mine = {"linear1.weight": method.vnet.net[0].weight, "linear1.bias": method.vnet.net[0].bias,
            "linear2.weight": method.vnet.net[2].weight, "linear2.bias": method.vnet.net[2].bias}
    for name, p in vnet.named_parameters():
        torch.testing.assert_close(mine[name], p, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("text, expected", [("false", False), ("no", False), ("true", True), ("0", False)])
def test_mwnet_normalize_given_as_text_is_a_bool(text, expected):
    from l2b.trainer import TrainConfig

    cfg = TrainConfig(method="mwnet", method_args={"normalize": text})
    cfg.validate()
    model, _ = model_pair()
    method = create_method("mwnet", model, torch.optim.SGD(model.parameters(), lr=0.1), **cfg.method_options())
    assert method.opts["normalize"] is expected


def test_mwnet_normalize_that_is_not_a_bool_fails_in_validation():
    from l2b.trainer import TrainConfig

    with pytest.raises(ValueError, match="normalize='maybe' is not a bool"):
        TrainConfig(method="mwnet", method_args={"normalize": "maybe"}).validate()


# ----------------------------------------------------------------------------- MLC


class RefMetaNet(nn.Module):
    """microsoft/MLC meta_models.py MetaNet (tie=False, sparsemax=False)."""

    def __init__(self, hx_dim, cls_dim, h_dim, num_classes):
        super().__init__()
        self.cls_emb = nn.Embedding(num_classes, cls_dim)
        self.net = nn.Sequential(nn.Linear(hx_dim + cls_dim, h_dim), nn.Tanh(), nn.Linear(h_dim, h_dim), nn.Tanh(),
                                 nn.Linear(h_dim, num_classes))

    def forward(self, hx, y):
        return F.softmax(self.net(torch.cat([hx, self.cls_emb(y)], dim=-1)), -1)


def ref_soft_cross_entropy(logit, pseudo_target):
    return -(pseudo_target * F.log_softmax(logit, -1)).sum(-1).mean()


def ref_update_params_sgd(params, grads, eta, opt):
    """mlc.py update_params_sgd(..., return_s=True)."""
    wdecay, momentum = opt.defaults["weight_decay"], opt.defaults["momentum"]
    dampening, nesterov = opt.defaults["dampening"], opt.defaults["nesterov"]
    ans, ss = [], []
    with torch.no_grad():
        for param, grad in zip(params, grads):
            dparam = grad + param * wdecay
            s = 1
            if momentum > 0:
                buf = opt.state[param].get("momentum_buffer") if param in opt.state else None
                moment = buf * momentum if buf is not None else torch.zeros_like(param)
                moment.add_(dparam, alpha=1.0 - dampening)
                if nesterov:
                    dparam = dparam + momentum * moment
                    s = 1 + momentum * (1.0 - dampening)
                else:
                    dparam = moment
                    s = 1.0 - dampening
            ans.append(param - dparam * eta)
            ss.append(s * eta)
    return ans, ss


def ref_step_hmlc_K(main_net, main_opt, meta_net, meta_opt, data_s, target_s, data_g, target_g, data_c, target_c, eta):
    """mlc.py step_hmlc_K with gradient_steps=1 (the K-step discount then never applies)."""
    names, params = zip(*main_net.named_parameters())
    h = main_net.forward_features(data_s)
    logit_s, x_s_h = main_net.head(h), h
    pseudo_target_s = meta_net(x_s_h.detach(), target_s)
    loss_s = ref_soft_cross_entropy(logit_s, pseudo_target_s)
    if data_c is not None:
        bs1, bs2 = target_s.size(0), target_c.size(0)
        logit_c = main_net(data_c)
        loss_s2 = F.cross_entropy(logit_c, target_c)
        loss_s = (loss_s * bs1 + loss_s2 * bs2) / (bs1 + bs2)
    f_param_grads = torch.autograd.grad(loss_s, params, create_graph=True)
    f_params_new, dparam_s = ref_update_params_sgd(params, f_param_grads, eta, main_opt)
    buffers = {k: v.clone() for k, v in main_net.named_buffers()}
    new = [p.detach().requires_grad_(True) for p in f_params_new]
    logit_g = functional_call(main_net, (dict(zip(names, new)), buffers), (data_g,))
    gw_prime = torch.autograd.grad(F.cross_entropy(logit_g, target_g), new)
    Lgw_prime = [dparam_s[i] * gw_prime[i] for i in range(len(dparam_s))]
    proxy_g = -torch.dot(torch.cat([g.view(-1) for g in f_param_grads]), torch.cat([g.view(-1) for g in Lgw_prime]))
    meta_opt.zero_grad()
    proxy_g.backward()
    meta_opt.step()
    for param, g in zip(params, f_param_grads):
        param.grad = g.detach()
    main_opt.step()


@pytest.mark.parametrize("mode", ["mix", "plain"])
def test_mlc_equals_the_reference_step(mode):
    ours, theirs = model_pair()
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)  # main.py --optimizer sgd
    opt_ours, opt_theirs = torch.optim.SGD(ours.parameters(), **sgd), torch.optim.SGD(theirs.parameters(), **sgd)
    meta_lr = 1e-2  # larger than the default 3e-4, so that the meta step shows in two steps
    method = create_method("mlc", ours, opt_ours, mode=mode, meta_lr=meta_lr)
    meta_net = RefMetaNet(64, 64, 128, 10).double()
    meta_net.load_state_dict(method.lcn.state_dict())
    meta_opt = torch.optim.Adam(meta_net.parameters(), lr=meta_lr, weight_decay=0, amsgrad=True, eps=1e-8)
    assert method.meta_opt.defaults["amsgrad"] and method.meta_opt.defaults["weight_decay"] == 0
    for x, y, xv, yv in digit_batches():
        if mode == "mix":  # main.py hmlc_K_mix: the gold batch's first half is the meta batch
            gbs = len(yv) // 2
            ref = (xv[:gbs], yv[:gbs], xv[gbs:], yv[gbs:])
        else:
            ref = (xv, yv, None, None)
        ref_step_hmlc_K(theirs, opt_theirs, meta_net, meta_opt, x, y, *ref, eta=opt_theirs.param_groups[0]["lr"])
        trainer_step(method, opt_ours, batch_of(x, y, xv, yv))
        for (name, p), q in zip(method.lcn.named_parameters(), meta_net.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-15, msg=name)
    assert_same_parameters(ours, theirs)
    assert_same_parameters(method.lcn, meta_net)


def test_mlc_defaults():
    model, _ = model_pair()
    method = create_method("mlc", model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert method.opts["mode"] == "mix"
    d = method.meta_opt.defaults
    assert isinstance(method.meta_opt, torch.optim.Adam) and d["amsgrad"] and d["lr"] == 3e-4 and d["weight_decay"] == 0
    assert method.lcn.cls_emb.embedding_dim == 64 and method.lcn.net[0].out_features == 128
    assert isinstance(method.lcn.net[1], nn.Tanh)


# ----------------------------------------------------------------------------- GLC


def test_glc_equals_train_ours_phase_1_estimate_and_phase_2():
    """train_ours.py: phase 1 on silver from the saved init, C_hat from gold with the test
    transform in eval mode, reset to the init, phase 2 on the gold+silver stream with the SAME
    optimizer object, loss (loss_g + loss_s) / batch_size."""
    from l2b.methods.base import SetupContext

    ours, theirs = model_pair()
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)  # train_ours.py's optimizer
    opt_ours, optimizer = torch.optim.SGD(ours.parameters(), **sgd), torch.optim.SGD(theirs.parameters(), **sgd)
    steps = digit_batches(n=24, m=40, steps=2)
    silver = [(x, y) for x, y, _, _ in steps]
    gold = (torch.cat([xv for *_, xv, _ in steps]), torch.cat([yv for *_, yv in steps]))
    batch_size = 32

    # --- reference
    init = copy.deepcopy(theirs.state_dict())
    theirs.train()
    for data, target in silver:  # train_phase1 (one epoch, constant lr)
        loss = F.cross_entropy(theirs(data), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    theirs.eval()  # get_C_hat_transpose on the deterministic (test-transform) gold loader
    with torch.no_grad():
        probs = F.softmax(theirs(gold[0]), dim=1)
    assert len(set(gold[1].tolist())) == 10  # every class has gold samples (else the reference divides by 0)
    C_hat = torch.stack([probs[gold[1] == label].mean(0) for label in range(10)])
    C_hat_transpose = C_hat.T
    theirs.load_state_dict(init)
    theirs.train()
    stream = []  # train_all_loader batches: gold and silver mixed, a gold mask per sample
    for (xs, ys), (xg, yg) in zip(silver, ((gold[0][i::2], gold[1][i::2]) for i in range(2))):
        x = torch.cat([xs[:20], xg[:4]])
        y = torch.cat([ys[:20], yg[:4]])
        is_gold = torch.cat([torch.zeros(20, dtype=torch.bool), torch.ones(4, dtype=torch.bool)])
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(len(stream)))
        stream.append((x[perm], y[perm], is_gold[perm]))
    for x, y, is_gold in stream:  # train_phase2
        optimizer.zero_grad()
        output_s = theirs(x[~is_gold])
        pre1 = C_hat_transpose[y[~is_gold]]
        pre2 = torch.mul(F.softmax(output_s, dim=1), pre1)
        loss_s = -(torch.log(pre2.sum(1))).sum(0)
        output_g = theirs(x[is_gold])
        loss_g = F.cross_entropy(output_g, y[is_gold], reduction="sum")
        loss = (loss_g + loss_s) / batch_size
        loss.backward()
        optimizer.step()

    # --- ours
    method = create_method("glc", ours, opt_ours, batch_size=batch_size)
    ctx = SetupContext(
        new_model=lambda: pytest.fail("GLC must start phase 1 from the run's initial weights"),
        new_optimizer=lambda m: torch.optim.SGD(m.parameters(), **sgd),
        train_batches=lambda e: ((x, y, None, len(y)) for x, y in silver),
        clean_batches=lambda e: pytest.fail("C is estimated with the test transform"),
        clean_eval_batches=lambda: iter([(gold[0], gold[1], None, len(gold[1]))]),
        lr_at=lambda e, s, n: 0.1, epochs=1, num_classes=10, train_steps=len(silver), clean_steps=1,
        log=lambda text: None, load_optimizer_state=opt_ours.load_state_dict)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    method.setup(ctx)
    assert not changed(ours, before)  # phase 2 starts from the initial weights
    torch.testing.assert_close(method.corruption, C_hat.double(), rtol=1e-12, atol=1e-15)
    for x, y, is_gold in stream:
        trainer_step(method, opt_ours, Batch(x, y, torch.arange(len(y)), trusted=is_gold))
    assert_same_parameters(ours, theirs)


# ----------------------------------------------------------------------------- bootstrap, mixup


def test_bootstrap_default_is_the_papers_hard_eq_2():
    """L2B paper Eq. 2 / Reed et al.'s hard bootstrapping, beta = 0.8, SGD steps."""
    ours, theirs = model_pair()
    opt_ours, opt_theirs = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) for m in (ours, theirs))
    method = create_method("bootstrap", ours, opt_ours)
    assert method.opts == {"beta": 0.8, "mode": "hard"}
    for x, y, _, _ in digit_batches():
        logits = theirs(x)
        z = F.one_hot(logits.max(1)[1], 10).double()  # the model's hard prediction, no gradient
        target = 0.8 * F.one_hot(y, 10).double() + 0.2 * z
        loss = -(target * F.log_softmax(logits, 1)).sum(1).mean()
        opt_theirs.zero_grad()
        loss.backward()
        opt_theirs.step()
        trainer_step(method, opt_ours, batch_of(x, y))
    assert_same_parameters(ours, theirs)


def test_mixup_baseline_equals_the_authors_baseline_branch():
    """yuyinzhou/L2B main.py --baseline --mixup: lam ~ Beta(32, 32), a permutation, and
    criterion(outputs, labels) * lam + criterion(outputs, labels_shuffel) * (1 - lam)."""
    ours, theirs = model_pair()
    opt_ours, opt_theirs = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) for m in (ours, theirs))
    method = create_method("mixup", ours, opt_ours, alpha=32.0)
    for x, y, _, _ in digit_batches():
        out = method.loss(batch_of(x, y))
        lam, indices = out.extra["lam"], out.extra["perm"]
        opt_ours.zero_grad()
        out.loss.backward()
        opt_ours.step()
        image = x * lam + x[indices] * (1 - lam)
        outputs = theirs(image)
        l_f = F.cross_entropy(outputs, y) * lam + F.cross_entropy(outputs, y[indices]) * (1 - lam)
        opt_theirs.zero_grad()
        l_f.backward()
        opt_theirs.step()
    assert_same_parameters(ours, theirs)


# ----------------------------------------------------------------------------- L2RW, L2B options


def ref_l2rw_ren_step(model, optimizer, x, y, x_val, y_val, lr):
    """Ren et al.'s reweight_autodiff (uber-research/learning-to-reweight-examples): ex_wts = 0,
    a plain SGD virtual step on sum(ex_wts * loss), the clean mean loss at the new parameters,
    w = max(-grad, 0) / (sum + [sum == 0]); the real step on sum(w * loss)."""
    names, params = zip(*model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    ex_wts = torch.zeros(len(y), dtype=torch.float64, requires_grad=True)
    loss = (ex_wts * F.cross_entropy(functional_call(model, (dict(zip(names, params)), buffers), (x,)), y,
                                     reduction="none")).sum()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    new = {n: p - lr * g for n, p, g in zip(names, params, grads)}
    val_loss = F.cross_entropy(functional_call(model, (new, buffers), (x_val,)), y_val)
    grads_ex_wts = torch.autograd.grad(val_loss, ex_wts)[0]
    ex_weight = torch.clamp(-grads_ex_wts, min=0)
    ex_weight_sum = ex_weight.sum()
    ex_weight_sum = ex_weight_sum + (ex_weight_sum == 0).double()
    ex_weight_norm = ex_weight / ex_weight_sum
    real = (ex_weight_norm.detach() * F.cross_entropy(model(x), y, reduction="none")).sum()
    optimizer.zero_grad()
    real.backward()
    optimizer.step()


def test_l2rw_with_virtual_step_sgd_is_ren_et_al():
    ours, theirs = model_pair()
    opt_ours, opt_theirs = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (ours, theirs))
    method = create_method("l2rw", ours, opt_ours, virtual_step="sgd")
    for x, y, xv, yv in digit_batches():
        ref_l2rw_ren_step(theirs, opt_theirs, x, y, xv, yv, 0.1)
        trainer_step(method, opt_ours, batch_of(x, y, xv, yv))
    assert_same_parameters(ours, theirs)


def test_isic_and_hard_normalisations_are_the_authors_expressions():
    """main.py: L2RW's ISIC branch (clamp, sigmoid, / (sum + 1e-10)) and --hard_weight (softmax
    of the 2n raw weights without temperature, entries <= --temperature zeroed)."""
    from l2b.normalize import normalize_weights

    g = torch.Generator().manual_seed(0)
    ra, rb = torch.randn(16, generator=g, dtype=torch.float64) * 1e-3, torch.randn(16, generator=g, dtype=torch.float64) * 1e-3
    w_tilde = torch.sigmoid(torch.clamp(ra, min=0))
    expect = w_tilde / (torch.sum(w_tilde) + 1e-10)
    alpha, beta = normalize_weights(ra, rb, normalize="isic", constraint="beta=0")
    torch.testing.assert_close(alpha, expect, rtol=1e-14, atol=0)
    assert (beta == 0).all()
    their_temperature = 0.03125  # their flag doubles as the threshold (here: 1 / 2n)
    w = F.softmax(torch.cat([ra, rb]), dim=-1)
    expect = torch.where(w <= their_temperature, torch.zeros_like(w), w)
    alpha, beta = normalize_weights(ra, rb, normalize="hard", temperature=1.0, threshold=their_temperature)
    torch.testing.assert_close(torch.cat([alpha, beta]), expect, rtol=1e-14, atol=0)
    assert 0 < (expect > 0).sum() < 32


def test_l2b_mixup_follows_the_authors_f_mixed_g_not():
    """main.py --reweight_label --mixup: cost1 mixed, cost2 = criterion(y_f_hat, pesudo_labels)
    unmixed; the real loss sum(weight * cost) with the same split."""
    from l2b.engines import split_loss_fn
    from l2b.methods.l2b import mixup_loss_fn

    model, _ = model_pair()
    method = create_method("l2b", model, torch.optim.SGD(model.parameters(), lr=0.1), mixup_alpha=32.0)
    calls = {}
    import l2b.methods.l2b as meta_module

    real = meta_module.bootstrap_loss

    def spy(mw, y, loss_fn=None):
        calls["loss_fn"] = loss_fn
        return real(mw, y, loss_fn)

    meta_module.bootstrap_loss = spy
    try:
        x, y, xv, yv = digit_batches()[0]
        method.loss(batch_of(x, y, xv, yv))
    finally:
        meta_module.bootstrap_loss = real
    f_fn, g_fn = split_loss_fn(calls["loss_fn"])
    assert f_fn is not None and g_fn is None  # g: plain CE against the mixed input's argmax
    z = torch.randn(4, 10, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 4])
    perm = torch.tensor([3, 2, 1, 0])
    torch.testing.assert_close(mixup_loss_fn(0.3, perm)(z, t),
                               F.cross_entropy(z, t, reduction="none") * 0.3 + F.cross_entropy(z, t[perm], reduction="none") * 0.7)
    mixed = create_method("l2b", model, torch.optim.SGD(model.parameters(), lr=0.1), mixup_alpha=32.0, mixup_pseudo="mixed")
    assert mixed.opts["mixup_pseudo"] == "mixed"


def test_l2b_warmup_with_mixup_mixes():
    model, _ = model_pair()
    method = create_method("l2b", model, torch.optim.SGD(model.parameters(), lr=0.1), mixup_alpha=32.0)
    x, y, _, _ = digit_batches()[0]
    torch.manual_seed(3)
    got = method.warmup_loss(batch_of(x, y))
    torch.manual_seed(3)
    lam = float(torch.distributions.Beta(32.0, 32.0).sample())
    perm = torch.randperm(len(y))
    out = model(lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(got, F.cross_entropy(out, y) * lam + F.cross_entropy(out, y[perm]) * (1 - lam))
    plain = create_method("l2b", model, torch.optim.SGD(model.parameters(), lr=0.1))
    torch.testing.assert_close(plain.warmup_loss(batch_of(x, y)), F.cross_entropy(model(x), y))


@pytest.mark.parametrize("option, value", [("normalize", "softmx"), ("engine", "jpv"), ("virtual_step", "adam"),
                                           ("meta_sampling", "fresh")])
def test_bad_meta_option_values_fail_in_validation(option, value):
    from l2b.trainer import TrainConfig

    with pytest.raises(ValueError, match=f"{option}={value!r} is not one of"):
        TrainConfig(method="l2b", method_args={option: value}).validate()


def test_meta_sampling_random_draws_a_fresh_batch_each_step(tmp_path):
    from l2b.trainer import TrainConfig, train

    base = dict(data="digits", model="mlp", width=16, epochs=2, batch_size=64, val_per_class=10, val_batch_size=20,
                progress="none", method="l2b")
    a = train(TrainConfig(**base, out=str(tmp_path / "cycle")))
    b = train(TrainConfig(**base, method_args={"meta_sampling": "random"}, out=str(tmp_path / "random")))
    c = TrainConfig(**base, method_args={"meta_sampling": "random"}, out=str(tmp_path / "resumed"))
    train(c, stop_after_epoch=0)
    r = train(c, resume=True)
    assert a["history"][-1]["train_loss"] != b["history"][-1]["train_loss"]
    assert [h["test_acc"] for h in r["history"]] == [h["test_acc"] for h in b["history"]]


def ref_sgd_replay(params, grads, opt):
    """What higher's differentiable SGD step computes for torch.optim.SGD (momentum, weight decay)."""
    group = opt.param_groups[0]
    out = []
    for p, g in zip(params, grads):
        d_p = g + group["weight_decay"] * p
        if group["momentum"]:
            buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
            d_p = d_p if buf is None else group["momentum"] * buf + d_p
        out.append(p - group["lr"] * d_p)
    return out


def ref_l2b_mixup_step(net, optimizer, image0, labels, val_data, val_labels, lam, indices):
    """yuyinzhou/L2B main.py train() with --reweight_label --mixup (norm_type org), the higher
    inner step written out: mixed image, cost1 mixed, cost2 = criterion(y_f_hat, pesudo_labels)."""
    image = image0 * lam + image0[indices] * (1 - lam)
    labels_shuffel = labels[indices]
    names, params = zip(*net.named_parameters())
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    y_f_hat = functional_call(net, (dict(zip(names, params)), buffers), (image,))
    pesudo_labels = y_f_hat.max(1)[1]
    cost1 = (F.cross_entropy(y_f_hat, labels, reduction="none") * lam
             + F.cross_entropy(y_f_hat, labels_shuffel, reduction="none") * (1 - lam))
    cost2 = F.cross_entropy(y_f_hat, pesudo_labels, reduction="none")
    cost = torch.cat((cost1.unsqueeze(0), cost2.unsqueeze(0)), dim=0)
    eps = torch.zeros(cost.size(), dtype=cost.dtype).requires_grad_()
    l_f_meta = torch.sum(cost * eps)
    grads = torch.autograd.grad(l_f_meta, params, create_graph=True)
    new = dict(zip(names, ref_sgd_replay(params, grads, optimizer)))
    y_g_hat = functional_call(net, (new, {k: v.clone() for k, v in net.named_buffers()}), (val_data,))
    l_g_meta = torch.mean(F.cross_entropy(y_g_hat, val_labels, reduction="none"))
    grad_eps = torch.autograd.grad(l_g_meta, eps, allow_unused=True)[0].detach()
    w_tilde = torch.clamp(-grad_eps.view(-1), min=0)
    norm_c = torch.sum(w_tilde) + 1e-10
    weight = (w_tilde / norm_c if norm_c != 0 else w_tilde).view(2, -1)
    y_f_hat = net(image)
    pesudo_labels = y_f_hat.max(1)[1]
    cost1 = (F.cross_entropy(y_f_hat, labels, reduction="none") * lam
             + F.cross_entropy(y_f_hat, labels_shuffel, reduction="none") * (1 - lam))
    cost2 = F.cross_entropy(y_f_hat, pesudo_labels, reduction="none")
    l_f = torch.sum(torch.cat((cost1.unsqueeze(0), cost2.unsqueeze(0)), dim=0) * weight)
    optimizer.zero_grad()
    l_f.backward()
    optimizer.step()


def _warmed_pair(epochs: int = 4):
    """Two equal copies of the tiny CNN after some cross-entropy steps, so that pseudo-labels are
    often right and the meta-gradient gives them weight (beta > 0)."""
    ours, theirs = model_pair()
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    batches = digit_batches(n=64, m=1, steps=20, noise=0.0, seed=1)
    for _ in range(epochs):
        for x, y, _, _ in batches:
            opt.zero_grad()
            F.cross_entropy(ours(x), y).backward()
            opt.step()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_l2b_with_mixup_equals_the_authors_step():
    ours, theirs = _warmed_pair()
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)  # main.py's optimizer
    opt_ours, opt_theirs = torch.optim.SGD(ours.parameters(), **sgd), torch.optim.SGD(theirs.parameters(), **sgd)
    method = create_method("l2b", ours, opt_ours, mixup_alpha=32.0)
    for s, (x, y, xv, yv) in enumerate(digit_batches()):
        torch.manual_seed(100 + s)  # our method draws lam, then the permutation
        out = method.loss(batch_of(x, y, xv, yv))
        assert out.beta.sum() > 0  # the pseudo-label term g is weighted: the test sees how it is mixed
        opt_ours.zero_grad(set_to_none=True)
        out.loss.backward()
        opt_ours.step()
        torch.manual_seed(100 + s)
        lam = float(torch.distributions.Beta(32.0, 32.0).sample())
        indices = torch.randperm(len(y))
        ref_l2b_mixup_step(theirs, opt_theirs, x, y, xv, yv, lam, indices)
    assert_same_parameters(ours, theirs)
