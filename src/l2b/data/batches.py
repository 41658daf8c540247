"""Batches of one run: each epoch's sample order, in-memory and image-file splits that yield
augmented, normalised batches on the training device (sharded under data parallelism), and the
clean batches of meta methods.

Everything is a pure function of the seeds it is given, so that a resumed run draws exactly the
batches of an uninterrupted one.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import torch

from .augment import augment_batch, normalize_batch
from .files import FileDataset
from .images import seeded_keys
from .reader import costly_worker_start, kept_reader


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

    def stream(self, epochs, augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) of the batches of ``epochs`` ((``epoch``'s other keyword arguments, the number of its
        batches to pass over), an endless iterable too), one after another."""
        for kwargs, skip in epochs:
            for j, (x, y, _, _) in enumerate(self.epoch(augment=augment, **kwargs)):
                if j >= skip:  # the passed-over batches still draw their augmentation, as they did
                    yield x, y


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

    def plan(self, batch_size: int, seed: int, augment: bool, batches: int | None = None,
             balanced: bool = False, whole: bool = False) -> list[tuple[list, int]]:
        """One epoch's batches for this rank, as ``epoch`` draws them: (keys, global batch size),
        a key being (position, the seed of its random transforms) when ``augment``, else the
        position. A sample's seed follows from its place in the global order, so every rank, and
        any number of loader workers, transforms it alike."""
        rank, world = (0, 1) if whole else self.shard
        order = (skip_excluded(epoch_order(self.y, batch_size, seed, batches, balanced), self) if augment
                 else torch.arange(len(self)))
        out, start = [], 0
        for b in global_batches(order, batch_size):
            keys = seeded_keys(b.tolist(), seed, start) if augment else b.tolist()
            out.append(([keys[j] for j in torch.tensor_split(torch.arange(len(b)), world)[rank].tolist()], len(b)))
            start += len(b)
        return out

    def epoch(self, batch_size: int, seed: int, augment: bool, batches: int | None = None,
              balanced: bool = False, whole: bool = False):
        plan = self.plan(batch_size, seed, augment, batches, balanced, whole)
        for (x, y, idx), (_, n_global) in zip(self._load((b for b, _ in plan), augment, kept=True), plan):
            yield x, y, idx, n_global

    def stream(self, epochs, augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) of the batches of ``epochs`` ((``epoch``'s other keyword arguments, the number of its
        batches to pass over), an endless iterable too), one after another through ONE DataLoader:
        a clean set of a batch or two is otherwise a new loader, its workers started anew, at
        every step. Batch for batch what ``epoch`` gives; passed-over batches are not decoded."""
        def keys():
            for kwargs, skip in epochs:
                for b, _ in self.plan(augment=augment, **kwargs)[skip:]:
                    yield b
        for x, y, _ in self._load(keys(), augment):
            yield x, y

    def _load(self, keys, augment: bool, kept: bool = False):
        """Batches of ``keys`` through a loader of their own, or with ``kept`` (one pass of a run after
        another, not a stream beside them) through the run's kept reader where loader workers are
        costly to start (``l2b.data.reader``) and no other pass is reading it."""
        nb = self.device.type == "cuda"
        reader = kept_reader(self.ds, self.workers) if kept and self.workers and costly_worker_start() else None
        if reader is not None and not reader.busy:
            items = self.items
            full = ([(*items[k[0]], k[0], True, k[1]) if augment else (*items[k], k, False, None) for k in b]
                    for b in keys)
            source = reader.read(full)
        else:
            source = self.ds.loader(self.items, train=augment, batches=keys, workers=self.workers)
        for x, y, idx in source:
            yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb), idx.to(self.device)


class CleanBatches:
    """Clean batches for meta methods. ``cycle`` (default): through the whole clean set,
    reshuffling once per pass, so every clean sample is used equally. ``random``: a fresh random
    batch each step, as the authors' ``next(iter(metaloader))`` draws. Its position is
    checkpointed."""

    def __init__(self, data, batch_size: int, seed: int, sampling: str = "cycle", augment: bool = True) -> None:
        self.data, self.batch_size, self.seed, self.sampling, self.augment = data, batch_size, seed, sampling, augment
        self.passes, self.position, self._it = 0, 0, None
        self._pass_length = len(global_batches(torch.arange(len(data)), batch_size))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sampling != "random" and self.position == self._pass_length:
            self.passes, self.position = self.passes + 1, 0
        if self._it is None:  # one stream for the rest of the run, resumed where the checkpoint left it
            # the plan holds no reference back to this object: dropped unclosed, it is freed at once and its
            # image loader's workers stop then (in a reference cycle, the collector took 5 s a loader)
            plan = _clean_epochs(self.sampling, self.batch_size, self.seed, self.passes, self.position)
            self._it = self.data.stream(plan, self.augment)
        x, y = next(self._it)
        self.position += 1
        return x, y

    def close(self) -> None:
        """End the stream (an image-file loader's workers stop now, not when it is collected)."""
        if self._it is not None:
            self._it.close()
            self._it = None

    def state_dict(self) -> dict:
        return {"passes": self.passes, "position": self.position, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.close()
        self.passes, self.position = d["passes"], d["position"]


def _clean_epochs(sampling: str, batch_size: int, seed: int, passes: int, position: int):
    """A clean stream's plan from (passes, position) on, endlessly: each pass over the clean set
    (reshuffled by its number), or under ``random`` each step's one-batch shuffle (the rest of it
    never planned nor loaded); with the batches of each to pass over."""
    if sampling == "random":
        for step in itertools.count(position):
            yield dict(batch_size=batch_size, seed=seed * 7919 + 104729 + step, batches=1), 0
    for p in itertools.count(passes):
        yield dict(batch_size=batch_size, seed=seed * 7919 + p), position if p == passes else 0
