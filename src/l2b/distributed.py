"""Data parallelism for L2B: W processes compute exactly what one would on the global batch.

Each rank holds n/W training samples and m/W clean samples. For one L2B step:

1. the validation gradient is averaged over ALL m clean samples before the JVP:
   ``v = (sum_r grad sum_j G_rj) / m`` (one all-reduce of the flattened gradient, the loss sum
   and the count);
2. each rank's raw weights ``scale * <v, grad f_i>`` are then exactly the single-process ones;
3. the normalisation is global: the sum / max of the softmax, sigmoid and sum normalisers are
   all-reduced, so the 2n weights of the whole batch sum to one;
4. the real step's loss ``sum_i alpha_i f_i + beta_i g_i`` is a sum over the global batch, so
   its gradients are all-reduced with SUM (:func:`all_reduce_grads`); mean losses (CE and the
   other methods) use the average.

BatchNorm: each rank normalises with its own shard's statistics, as plain DDP does. With BN the
result equals one process whose BN layers see the shards separately; without BN (or in eval mode)
it equals the plain single-process step. SyncBatchNorm has no forward-mode AD, so it cannot run
inside the JVP engines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Sync:
    """All-reduce helpers over a process group (``None``: the default group)."""

    group: object | None = None

    def allsum(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t

    def allmax(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return t

    def mean_gradient(self, grads, loss_sum: torch.Tensor, count: int):
        """Turn per-rank gradients of a SUM of losses over ``count`` samples into the gradient
        of the mean over all ranks' samples; also return that mean loss."""
        flat = torch.cat([g.reshape(-1) for g in grads]
                         + [loss_sum.reshape(1).to(grads[0].dtype),
                            torch.tensor([float(count)], dtype=grads[0].dtype, device=grads[0].device)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        total = flat[-1]
        out, offset = [], 0
        for g in grads:
            out.append((flat[offset : offset + g.numel()] / total).view_as(g))
            offset += g.numel()
        return out, flat[-2] / total


def current_sync() -> Sync | None:
    """A :class:`Sync` for the default group when several processes run, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Sync()
    return None


def all_reduce_grads(params, op: str = "mean", group=None) -> None:
    """All-reduce the ``.grad`` of ``params`` in one flat buffer: ``"sum"`` for a loss that is a
    sum over the global batch (L2B's weighted loss), ``"mean"`` for a per-rank mean."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    if op == "mean":
        flat /= dist.get_world_size(group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def init_from_env(device_type: str) -> tuple[int, int, int]:
    """Join the process group that torchrun describes in the environment.

    Returns (rank, world size, local rank); (0, 1, 0) when not launched by torchrun.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
