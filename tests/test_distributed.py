"""Two gloo processes compute exactly what one process computes on the concatenated batch."""

from __future__ import annotations

import copy
import os
from queue import Empty
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import l2b
from l2b.distributed import all_reduce_grads

WORLD = 2
CASES = [
    ("sum", None), ("softmax", None), ("sigmoid", None), ("hard", None),
    ("sum", "beta=0"), ("softmax", "alpha=0"), ("sum", "alpha+beta=1"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _finish() -> None:
    """Leave the group together: a rank that tears gloo down while its peer is still in a
    collective can abort the peer."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _join(rank: int, port: int) -> None:
    """Join the WORLD-process gloo group (in a rank of ``Ranks``)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)


def _shards(rank: int) -> tuple[slice, slice]:
    """This rank's slices of _batches(): unequal on purpose, 6 + 4 training and 3 + 3 clean samples."""
    return (slice(0, 6), slice(0, 3)) if rank == 0 else (slice(6, 10), slice(3, 6))


def _serve(rank: int, tasks, results) -> None:
    """One rank, kept for the module's tests: runs each ``(target, port, args)`` it is sent as
    ``target(rank, port, *args, results)``; an exception goes back as its traceback."""
    torch.set_num_threads(1)
    while (task := tasks.get()) is not None:
        target, port, args = task
        try:
            target(rank, port, *args, results)
        except BaseException:  # noqa: BLE001 -- the test reports it
            import traceback

            results.put((rank, RankFailed(traceback.format_exc())))


class RankFailed(str):
    """The traceback of a task that raised in a rank."""


class Ranks:
    """WORLD spawned processes, started once for the module (each spawn imports torch, which cost
    these tests more than their work), that run one task at a time on every rank; after a failure
    or a timeout they are stopped, and the next task starts fresh ones."""

    def __init__(self) -> None:
        self.procs = []

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.tasks = [ctx.Queue() for _ in range(WORLD)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_serve, args=(r, self.tasks[r], self.results), daemon=True)
                      for r in range(WORLD)]
        for p in self.procs:
            p.start()

    def stop(self, kill: bool = False) -> None:
        for p, q in zip(self.procs, self.tasks if self.procs else []):
            if kill:
                p.kill()
            else:
                q.put(None)
        for p in self.procs:
            p.join(timeout=30)
        self.procs = []

    def run(self, target, *args) -> dict:
        """What each rank put on the results queue running ``target(rank, port, *args, queue)``, by
        rank; a rank that raised fails the test with its traceback."""
        if not self.procs or not all(p.is_alive() for p in self.procs):
            self.stop(kill=True)
            self.start()
        port = free_port()
        for q in self.tasks:
            q.put((target, port, args))
        results, waited = {}, 0
        try:
            while len(results) < WORLD:
                try:
                    rank, value = self.results.get(timeout=5)
                except Empty:
                    waited += 5
                    dead = [p.exitcode for p in self.procs if not p.is_alive()]
                    assert not dead and waited < 300, f"a rank ended (exit codes {dead}) or none answered in {waited} s"
                    continue
                if isinstance(value, RankFailed):  # its peer may be waiting in a collective: end both
                    raise AssertionError(f"rank {rank}:\n{value}")
                results[rank] = value
        except BaseException:
            self.stop(kill=True)
            raise
        return results


@pytest.fixture(scope="module")
def ranks():
    pool = Ranks()
    yield pool
    pool.stop()


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 5)).double()


def _batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, 2, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (10,), generator=g)
    xv = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 5, (6,), generator=g)
    return x, y, xv, yv


def _worker(rank: int, port: int, engine: str, queue) -> None:
    _join(rank, port)
    try:
        x, y, xv, yv = _batches()
        sl, vl = _shards(rank)
        worst = 0.0
        for normalize, constraint in CASES:
            model = _model()
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
            ref_model, ref_opt = copy.deepcopy((model, opt))
            kw = dict(normalize=normalize, constraint=constraint, temperature=0.05)
            ref = l2b.meta_weights(ref_model, x, y, xv, yv, optimizer=ref_opt, **kw)
            mw = l2b.meta_weights(model, x[sl], y[sl], xv[vl], yv[vl], optimizer=opt,
                                  engine=engine, distributed=True, **kw)
            for a, b in ((mw.raw_alpha, ref.raw_alpha[sl]), (mw.raw_beta, ref.raw_beta[sl]),
                         (mw.alpha, ref.alpha[sl]), (mw.beta, ref.beta[sl])):
                worst = max(worst, (a - b).abs().max().item())
            worst = max(worst, abs(mw.val_loss.item() - ref.val_loss.item()))
            # the real step: weighted SUM over the global batch -> gradients all-reduced with SUM
            l2b.bootstrap_loss(mw, y[sl]).backward()
            all_reduce_grads(model.parameters(), op="sum")
            opt.step()
            l2b.bootstrap_loss(ref, y).backward()
            ref_opt.step()
            for p, q in zip(model.parameters(), ref_model.parameters()):
                worst = max(worst, (p - q).abs().max().item())
        queue.put((rank, worst))
    finally:
        _finish()


@pytest.mark.parametrize("engine", ["jvp", "jvp-lean"])
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks, engine):
    results = ranks.run(_worker, engine)
    assert max(results.values()) <= 1e-12, results


def _drop_in_worker(rank: int, port: int, wrap: bool, queue) -> None:
    _join(rank, port)
    try:
        x, y, xv, yv = _batches()
        sl, vl = _shards(rank)
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        ref_model, ref_opt = copy.deepcopy((model, opt))
        shard_model = torch.nn.parallel.DistributedDataParallel(model) if wrap else model
        step = l2b.L2B(shard_model, opt, clip_grad_norm=0.5, distributed=True)
        ref = l2b.L2B(ref_model, ref_opt, clip_grad_norm=0.5)
        for _ in range(3):
            step.step(x[sl], y[sl], xv[vl], yv[vl])
            ref.step(x, y, xv, yv)
        queue.put((rank, max((p - q).abs().max().item() for p, q in zip(model.parameters(), ref_model.parameters()))))
    finally:
        _finish()


@pytest.mark.parametrize("wrap", [False, True], ids=["plain", "ddp"])
def test_the_drop_in_step_on_two_ranks_equals_one_process(ranks, wrap):
    """``l2b.L2B(..., distributed=True)``, each rank stepping on its shards (the model as it is, or
    wrapped in DistributedDataParallel, which averages gradients where this loss sums over the
    global batch), lands on one process's parameters after three steps, clipping included."""
    results = ranks.run(_drop_in_worker, wrap)
    assert max(results.values()) <= 1e-12, results


def test_distributed_without_a_process_group_is_a_clear_error():
    model = _model()
    x, y, xv, yv = _batches()
    with pytest.raises(ValueError, match="distributed=True needs torch.distributed"):
        l2b.meta_weights(model, x, y, xv, yv, lr=0.1, distributed=True)


def _train_worker(rank: int, port: int, cfg_dict: dict, interrupt: bool, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from l2b.trainer import TrainConfig, train

    try:
        if interrupt:  # stop after the first epoch, then resume on both ranks
            train(TrainConfig(**cfg_dict), stop_after_epoch=0)
            m = train(TrainConfig(**cfg_dict), resume=True)
        else:
            m = train(TrainConfig(**cfg_dict))
        queue.put((rank, m["test_acc_last"]))
    finally:
        _finish()


@pytest.mark.parametrize("method, interrupt", [("l2b", False), ("ce", False), ("l2b", True)])
def test_two_rank_training_reaches_the_single_process_weights(ranks, tmp_path, method, interrupt):
    from l2b.trainer import TrainConfig, train

    base = dict(data="digits", model="mlp", width=32, method=method, epochs=2, batch_size=64,
                val_batch_size=20, train_subset=256, val_per_class=5, augment="none", lr=0.1,
                noise="symmetric:0.4", progress="none")
    single = train(TrainConfig(**base, out=str(tmp_path / "single")))
    results = ranks.run(_train_worker, {**base, "out": str(tmp_path / "ddp")}, interrupt)
    a = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert b["world_size"] == WORLD
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert abs(single["test_acc_last"] - results[0]) <= 0.2
    # the logged train_loss is the global batch's, for meta methods too (it was half of it)
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
    if method == "l2b":  # the per-sample weights gathered from both ranks match too
        wa, wb = np.load(tmp_path / "single" / "weights.npz"), np.load(tmp_path / "ddp" / "weights.npz")
        np.testing.assert_allclose(wb["alpha"], wa["alpha"], rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(wb["pseudo_labels"], wa["pseudo_labels"])


def _peer_worker(rank: int, port: int, queue) -> None:
    _join(rank, port)
    from l2b.methods import Batch, create_method

    try:
        torch.manual_seed(0)  # same initial networks on both ranks, as under torchrun
        model = torch.nn.Linear(6, 3)
        method = create_method("coteaching", model, torch.optim.SGD(model.parameters(), lr=0.5), forget_rate=0.5,
                               distributed=True)
        g = torch.Generator().manual_seed(100 + rank)  # different shards
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        method.loss(Batch(x, y, torch.arange(8), epoch=5.0))
        flat = torch.cat([p.detach().reshape(-1) for p in method.peer.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        queue.put((rank, (gathered[0] - gathered[1]).abs().max().item()))
    finally:
        _finish()


def test_coteaching_peers_stay_identical_across_ranks(ranks):
    assert max(ranks.run(_peer_worker).values()) == 0.0


def _mwnet_worker(rank: int, port: int, method_name: str, queue) -> None:
    _join(rank, port)
    from l2b.methods import Batch, create_method

    try:
        x, y, xv, yv = _batches()
        sl, vl = _shards(rank)
        worst = 0.0
        for normalize in ((True, False) if method_name == "mwnet" else (None,)):
            runs = []
            for distributed in (False, True):
                model = _model()
                opt = torch.optim.SGD(model.parameters(), lr=0.1)
                torch.manual_seed(7)
                # MLC's mix mode splits each rank's shard of the clean batch (docs/distributed.md)
                kw = {"normalize": normalize} if method_name == "mwnet" else {"mode": "plain"}
                method = create_method(method_name, model, opt, meta_optimizer="sgd", meta_lr=0.5,
                                       distributed=distributed, **kw)
                if method_name == "mwnet":
                    method.vnet.double()
                b = (Batch(x[sl], y[sl], torch.arange(4), xv[vl], yv[vl]) if distributed
                     else Batch(x, y, torch.arange(10), xv, yv))
                out = method.loss(b)
                opt.zero_grad()
                out.loss.backward()
                if distributed:
                    all_reduce_grads(model.parameters(), op="sum")
                opt.step()
                meta_net = method.vnet if method_name == "mwnet" else method.lcn
                runs.append(torch.cat([p.detach().reshape(-1) for p in
                                       list(model.parameters()) + list(meta_net.parameters())]))
            worst = max(worst, (runs[0] - runs[1]).abs().max().item())
        queue.put((rank, worst))
    finally:
        _finish()


@pytest.mark.parametrize("method_name", ["mwnet", "mlc"])
def test_look_ahead_meta_methods_two_ranks_equal_one_process(ranks, method_name):
    assert max(ranks.run(_mwnet_worker, method_name).values()) <= 1e-12


@pytest.mark.parametrize("method", ["glc", "distill"])
def test_setup_methods_fit_once_and_share_it_across_ranks(ranks, tmp_path, method):
    from l2b.trainer import TrainConfig, train

    base = dict(data="digits", model="mlp", width=16, method=method, epochs=1, batch_size=64,
                train_subset=256, val_per_class=5, augment="none", progress="none")
    train(TrainConfig(**base, out=str(tmp_path / "single")))
    ranks.run(_train_worker, {**base, "out": str(tmp_path / "ddp")}, False)
    a = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["method"]
    b = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["method"]
    key = "corruption" if method == "glc" else "teacher"
    if method == "glc":  # rank 0 fitted on the whole data, exactly as one process does
        assert torch.equal(a[key], b[key])
    else:
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), k
