"""The virtual step of Adam and AdamW, held to torch's own optimizer in float64.

L2B's meta-gradient is taken at the zero weights, where Adam's step, not linear in the gradient,
is linearised: theta_hat(eps) = shift - eps * scale * grad (l2b.virtual_step). The shift must be
the step torch.optim takes on a zero gradient, the scale its derivative (central differences of
torch's own step), and the JVP engine must agree with the unrolled, differentiable replay of the
update rule (engines._replay_adam) and, where only the classifier moves, with the last-layer engine.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import l2b
from l2b.virtual_step import optimizer_step

OPTIMIZERS = {
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam-l2": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.05, amsgrad=True),
    "adam-l2-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, amsgrad=True, betas=(0.8, 0.99)),
}


def _setup(kind: str, warm: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x, x_val = torch.randn(12, 5, generator=gen, dtype=torch.float64), torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y, y_val = torch.randint(0, 3, (12,), generator=gen), torch.randint(0, 3, (6,), generator=gen)
    opt = OPTIMIZERS[kind](model.parameters())
    for _ in range(warm):  # real steps: the state the virtual step reads
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt, (x, y, x_val, y_val)


def _torch_step(model, opt, kind, grads):
    """torch's own step from the same parameters and state, on the given gradients."""
    twin = copy.deepcopy(model)
    twin_opt = OPTIMIZERS[kind](twin.parameters())
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for p, g in zip(twin.parameters(), grads):
        p.grad = g.clone()
    twin_opt.step()
    return [p.detach() for p in twin.parameters()]


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("warm", [0, 3])
def test_shift_is_torchs_step_on_a_zero_gradient(kind, warm):
    model, opt, _ = _setup(kind, warm)
    shifts, _ = optimizer_step(model, opt).shift_and_scale()
    expected = _torch_step(model, opt, kind, [torch.zeros_like(p) for p in model.parameters()])
    for s, e in zip(shifts, expected):
        torch.testing.assert_close(s, e, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_scale_is_the_derivative_of_torchs_step(kind):
    model, opt, _ = _setup(kind, 3)
    _, scales = optimizer_step(model, opt).shift_and_scale()
    gen = torch.Generator().manual_seed(2)
    u = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in model.parameters()]
    h = 1e-6
    up = _torch_step(model, opt, kind, [h * d for d in u])
    down = _torch_step(model, opt, kind, [-h * d for d in u])
    for a, b, c, d in zip(up, down, scales, u):  # theta_hat(h u) - theta_hat(-h u) = -2 h scale u
        torch.testing.assert_close((a - b) / (2 * h), -c * d, rtol=1e-6, atol=1e-9)


def test_before_the_first_step_adamw_looks_ahead_with_slope_lr_over_eps():
    """With no state, AdamW's step near a zero gradient is lr * g / (|g| + eps): slope lr / eps."""
    model, opt, _ = _setup("adamw", 0)
    _, scales = optimizer_step(model, opt).shift_and_scale()
    for c in scales:
        torch.testing.assert_close(c, torch.full_like(c, 1e-2 / 1e-8), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("warm", [0, 3])
def test_jvp_engines_agree_with_the_unrolled_replay_of_the_update(kind, warm):
    model, opt, batches = _setup(kind, warm)
    got = {e: l2b.meta_weights(model, *batches, optimizer=opt, engine=e) for e in ("jvp", "jvp-lean", "unroll")}
    ref = got["unroll"]
    # Adam's L2 term before its first step makes the unrolled replay subtract nearly equal terms
    tol = 1e-8 if warm == 0 and "l2" in kind else 1e-12
    for e in ("jvp", "jvp-lean"):
        torch.testing.assert_close(got[e].raw_alpha, ref.raw_alpha, rtol=tol, atol=tol * ref.raw_alpha.abs().max())
        torch.testing.assert_close(got[e].raw_beta, ref.raw_beta, rtol=tol, atol=tol * ref.raw_beta.abs().max())


def test_last_layer_engine_takes_adams_preconditioner_where_only_the_classifier_moves():
    model, opt, batches = _setup("adamw", 3)
    for p in model[0].parameters():
        p.requires_grad_(False)
    exact = l2b.meta_weights(model, *batches, optimizer=opt, engine="jvp")
    last = l2b.meta_weights(model, *batches, optimizer=opt, engine="last-layer")
    torch.testing.assert_close(last.raw_alpha, exact.raw_alpha, rtol=1e-10, atol=1e-14)


def test_the_drop_in_step_trains_with_adamw_and_its_replayed_look_ahead():
    model, opt, batches = _setup("adamw", 0)
    step = l2b.L2B(model, opt)
    for _ in range(3):
        out = step.step(*batches)
        assert torch.isfinite(out.loss)
    assert int(opt.state[next(model.parameters())]["step"]) == 3


def test_mwnet_and_mlc_look_ahead_refuse_an_adam_step():
    from l2b.engines import lookahead_tangents
    from l2b.engines import rng_snapshot

    model, opt, (x, y, x_val, y_val) = _setup("adamw", 1)
    loss = F.cross_entropy(model(x), y)
    with pytest.raises(ValueError, match="an Adam step is not linear there: train them with SGD"):
        lookahead_tangents(model, x, x_val, y_val, loss, optimizer_step(model, opt), rng_snapshot(x.device))


@pytest.mark.parametrize("method", ["l2b", "coteaching", "glc"])
def test_a_run_with_adamw_trains_and_resumes_bit_identically(tmp_path, method):
    """l2b train --optimizer adamw: L2B's meta step replays the run's AdamW; co-teaching's peer and
    GLC's second phase take the same optimizer; a stopped run resumes onto the same weights."""
    import numpy as np

    from l2b.config import TrainConfig
    from l2b.trainer import train

    cfg = TrainConfig(data="digits", model="mlp", width=16, method=method, epochs=2, batch_size=64, train_subset=300,
                      val_per_class=5, optimizer="adamw", lr=1e-3, weight_decay=0.01, progress="none",
                      out=str(tmp_path / "run"), method_args={"forget_rate": 0.36} if method == "coteaching" else {})
    straight = train(cfg)
    a = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert all("exp_avg_sq" in s for s in a["optimizer"]["state"].values())  # AdamW's state
    cfg.out = str(tmp_path / "interrupted")
    train(cfg, stop_after_epoch=0)
    resumed = train(cfg, resume=True)
    b = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert straight["test_acc_last"] == resumed["test_acc_last"] and np.isfinite(straight["history"][-1]["train_loss"])
