"""Batches of one run: each epoch's sample order, in-memory and image-file splits that yield
augmented, normalised batches on the training device (sharded under data parallelism), and the
clean batches of meta methods.

Everything is a pure function of the seeds it is given, so that a resumed run draws exactly the
batches of an uninterrupted one.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .augment import augment_batch, normalize_batch
from .files import FileDataset


def epoch_order(labels: torch.Tensor, batch_size: int, seed: int, batches: int | None = None,
                balanced: bool = False) -> torch.Tensor:
    """Sample positions of one epoch, a pure function of ``seed``: a permutation of everything,
    or ``batches * batch_size`` samples, drawn equally from every class when ``balanced``
    (without replacement while a class has enough samples)."""
    g = torch.Generator().manual_seed(seed)
    n = len(labels) if batches is None else batches * batch_size
    if not balanced:
        if batches is None:
            return torch.randperm(len(labels), generator=g)
        reps = -(-n // len(labels))
        return torch.cat([torch.randperm(len(labels), generator=g) for _ in range(reps)])[:n]
    labels = labels.cpu()
    classes = torch.unique(labels)
    per_class = -(-n // len(classes))
    picks = []
    for c in classes:
        members = torch.nonzero(labels == c).flatten()
        reps = -(-per_class // len(members))
        perm = torch.cat([members[torch.randperm(len(members), generator=g)] for _ in range(reps)])
        picks.append(perm[:per_class])
    order = torch.cat(picks)
    return order[torch.randperm(len(order), generator=g)][:n]


def skip_excluded(order: torch.Tensor, data) -> torch.Tensor:
    """A training epoch's order without the positions the split excludes (``exclude``): their
    logged weights stay where they are, they just take no step."""
    excluded = getattr(data, "excluded", None)
    if excluded is None:
        return order
    return order[~excluded[order.cpu()]]


def exclude(data, indices) -> None:
    """Leave these positions out of ``data``'s training epochs from now on (all others stay)."""
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[torch.as_tensor(np.asarray(indices), dtype=torch.int64)] = True
    data.excluded = mask


def global_batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split an epoch's order into global batches; a final batch of one is dropped (BatchNorm
    cannot train on it)."""
    out = list(torch.split(order, batch_size))
    if len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


class TensorData:
    """An in-memory split on the training device: uint8 images, labels, batched augmentation.

    Under data parallelism (``shard=(rank, world)``) every rank draws the same global batches and
    augments them identically, then keeps its contiguous slice: the union over ranks is exactly
    the single-process batch.
    """

    def __init__(self, x: torch.Tensor, y, device, mean, std, augment: dict, shard=(0, 1)) -> None:
        self.x = x.to(device)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.int64).to(device)
        self.mean, self.std, self.augment, self.shard = mean.to(device), std.to(device), augment, shard

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices, labels=None) -> "TensorData":
        """A split of these samples at ``indices`` (positions), with ``labels`` (default: theirs)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64, device=self.x.device)
        y = self.y[idx] if labels is None else labels
        return TensorData(self.x[idx], np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y), self.x.device,
                          self.mean, self.std, self.augment, self.shard)

    def epoch(self, batch_size: int, seed: int, augment: bool, batches: int | None = None,
              balanced: bool = False, whole: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
        """(x, y, positions, global batch size) of this rank, in the order ``seed`` fixes;
        ``whole``: the whole global batches, whatever the rank."""
        dev = self.x.device
        rank, world = (0, 1) if whole else self.shard
        order = epoch_order(self.y, batch_size, seed, batches, balanced)
        order = (skip_excluded(order, self) if augment else order).to(dev)  # scoring sees every sample
        g = torch.Generator(device=dev).manual_seed(seed)
        for idx in global_batches(order, batch_size):
            x = self.x[idx]
            if augment and (self.augment["crop_padding"] or self.augment["flip"]):
                x = augment_batch(x, **self.augment, generator=g)
            local = torch.tensor_split(torch.arange(len(idx), device=dev), world)[rank]
            yield normalize_batch(x[local], self.mean, self.std), self.y[idx[local]], idx[local], len(idx)


def union(a, b):
    """One split holding ``a``'s samples, then ``b``'s (GLC's stream over silver and gold)."""
    if isinstance(a, TensorData):
        return TensorData(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]).cpu().numpy(), a.x.device, a.mean, a.std,
                          a.augment, a.shard)
    return FileData(a.ds, a.items + b.items, [y for _, y in a.items + b.items], a.device, a.workers, a.shard)


class FileData:
    """An image-file split streamed by a DataLoader (decode, resize, crop, flip in workers);
    under data parallelism each rank loads only its slice of every global batch."""

    def __init__(self, ds: FileDataset, items, y, device, workers: int, shard=(0, 1)) -> None:
        self.ds, self.device, self.workers, self.shard = ds, device, workers, shard
        self.items = [(path, int(label)) for (path, _), label in zip(items, y)]
        self.y = torch.tensor([label for _, label in self.items], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    def take(self, indices, labels=None) -> "FileData":
        """A split of these samples at ``indices`` (positions), with ``labels`` (default: theirs)."""
        items = [self.items[int(i)] for i in indices]
        y = [label for _, label in items] if labels is None else [int(v) for v in np.asarray(labels)]
        return FileData(self.ds, items, y, self.device, self.workers, self.shard)

    def epoch(self, batch_size: int, seed: int, augment: bool, batches: int | None = None,
              balanced: bool = False, whole: bool = False):
        rank, world = (0, 1) if whole else self.shard
        order = (skip_excluded(epoch_order(self.y, batch_size, seed, batches, balanced), self) if augment
                 else torch.arange(len(self)))
        plan = [(torch.tensor_split(b, world)[rank].tolist(), len(b)) for b in global_batches(order, batch_size)]
        loader = self.ds.loader(self.items, train=augment, workers=self.workers, seed=seed,
                                batches=[b for b, _ in plan])
        nb = self.device.type == "cuda"
        for (x, y, idx), (_, n_global) in zip(loader, plan):
            yield (x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb),
                   idx.to(self.device), n_global)


class CleanBatches:
    """Clean batches for meta methods. ``cycle`` (default): through the whole clean set,
    reshuffling once per pass, so every clean sample is used equally. ``random``: a fresh random
    batch each step, as the authors' ``next(iter(metaloader))`` draws. Its position is
    checkpointed."""

    def __init__(self, data, batch_size: int, seed: int, sampling: str = "cycle", augment: bool = True) -> None:
        self.data, self.batch_size, self.seed, self.sampling, self.augment = data, batch_size, seed, sampling, augment
        self.passes, self.position, self._it = 0, 0, None

    def _start(self):
        self._it = iter(self.data.epoch(self.batch_size, self.seed * 7919 + self.passes, augment=self.augment))
        for _ in range(self.position):  # resuming mid-pass
            next(self._it)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sampling == "random":  # the first batch of a fresh shuffle, seeded by the step:
            # an epoch of one batch (the rest of the shuffle is never planned nor loaded)
            x, y, _, _ = next(iter(self.data.epoch(self.batch_size, self.seed * 7919 + 104729 + self.position,
                                                   augment=self.augment, batches=1)))
            self.position += 1
            return x, y
        if self._it is None:
            self._start()
        try:
            x, y, _, _ = next(self._it)
        except StopIteration:
            self.passes, self.position = self.passes + 1, 0
            self._start()
            x, y, _, _ = next(self._it)
        self.position += 1
        return x, y

    def state_dict(self) -> dict:
        return {"passes": self.passes, "position": self.position, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.passes, self.position, self._it = d["passes"], d["position"], None
