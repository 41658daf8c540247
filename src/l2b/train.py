"""The training loop: data, noise, model, method, schedule, evaluation, logging, checkpoints.

Read top to bottom: ``train(cfg)`` runs one experiment (``l2b.config.TrainConfig``) into
``cfg.out`` and returns its final metrics. A method (``l2b.methods``) only builds
the loss of a step; it never touches this loop.

Model selection uses the CLEAN VALIDATION set only; the test set is evaluated every epoch and
reported twice: at the last epoch and at the best-validation epoch (the authors' code selected
on the test set; docs/methods.md).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import all_reduce_grads, current_sync, init_from_env
from .data import ArrayDataset, FileDataset, augment_batch, clean_val_split, load_dataset, normalize_batch
from .methods import METHODS, Batch, create_method
from .methods.base import SetupContext
from .models import create_model
from .noise import apply_noise, transition_matrix
from .config import TrainConfig
from .meta import NonFiniteWeights
from .rundir import Progress, atomic_save, environment, load_checkpoint, prepare_out, tensorboard


# ----------------------------------------------------------------------------- data


@dataclass
class Prepared:
    """The data of one run: the clean split taken, the noise applied."""

    ds: ArrayDataset | FileDataset
    train_idx: np.ndarray  # positions in the dataset's training set
    val_idx: np.ndarray | None  # clean validation positions in it (None: the dataset's own set)
    y_true: np.ndarray  # true labels of the training samples used
    y_noisy: np.ndarray  # their noisy labels
    noise_rate: float
    transition: np.ndarray


def prepare_data(cfg: TrainConfig, needs_clean: bool) -> Prepared:
    options = {"on_bad_images": cfg.on_bad_images, "image_size": cfg.image_size}
    name = cfg.data.partition(":")[0]
    ds = load_dataset(cfg.data, **(options if name in ("folder", "isic2019", "clothing1m") else {}))
    y_all = ds.y_train.numpy()
    own_val = (isinstance(ds, ArrayDataset) and ds.x_val is not None) or (isinstance(ds, FileDataset) and ds.val)
    if cfg.val_per_class is not None or cfg.val_total is not None:
        train_idx, val_idx = clean_val_split(y_all, per_class=cfg.val_per_class, total=cfg.val_total, seed=cfg.seed)
    elif own_val:
        train_idx, val_idx = np.arange(len(y_all)), None
    elif needs_clean:
        raise ValueError(
            f"method {cfg.method!r} needs a clean validation set: give --val-per-class K "
            f"(or --val-total M), or use a dataset with its own clean set"
        )
    else:
        train_idx, val_idx = np.arange(len(y_all)), np.array([], dtype=np.int64)
    # Noise is applied to the whole training set (a pure function of it, so CIFAR-N files line
    # up), then the clean validation samples keep their true labels.
    features = None
    if cfg.noise.startswith("instance:"):
        if not isinstance(ds, ArrayDataset):
            raise ValueError("instance noise needs in-memory images; not available for image-file datasets")
        features = ds.x_train.reshape(len(ds.x_train), -1).numpy()
    noisy = apply_noise(
        y_all, cfg.noise, num_classes=ds.num_classes,
        seed=cfg.seed if cfg.noise_seed is None else cfg.noise_seed,
        coarse_labels=None if ds.coarse_train is None else ds.coarse_train.numpy(),
        mapping=ds.asymmetric_map, features=features, data_dir=ds.root,
    )
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_idx):
            raise ValueError(f"train_subset={cfg.train_subset} exceeds the {len(train_idx)} training samples")
        rng = np.random.Generator(np.random.PCG64(cfg.seed))
        train_idx = np.sort(rng.choice(train_idx, cfg.train_subset, replace=False))
    y_true, y_noisy = y_all[train_idx], noisy.labels[train_idx]
    return Prepared(ds, train_idx, val_idx, y_true, y_noisy, float((y_true != y_noisy).mean()),
                    transition_matrix(y_true, y_noisy, ds.num_classes))


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

    def epoch(self, batch_size: int, seed: int, augment: bool, batches: int | None = None,
              balanced: bool = False, whole: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
        """(x, y, positions, global batch size) of this rank, in the order ``seed`` fixes;
        ``whole``: the whole global batches, whatever the rank."""
        dev = self.x.device
        rank, world = (0, 1) if whole else self.shard
        order = epoch_order(self.y, batch_size, seed, batches, balanced).to(dev)
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

    def epoch(self, batch_size: int, seed: int, augment: bool, batches: int | None = None,
              balanced: bool = False, whole: bool = False):
        rank, world = (0, 1) if whole else self.shard
        order = epoch_order(self.y, batch_size, seed, batches, balanced) if augment else torch.arange(len(self))
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
        if self.sampling == "random":  # the first batch of a fresh shuffle, seeded by the step
            x, y, _, _ = next(iter(self.data.epoch(self.batch_size, self.seed * 7919 + 104729 + self.position,
                                                   augment=self.augment)))
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
        return {"passes": self.passes, "position": self.position}

    def load_state_dict(self, d: dict) -> None:
        self.passes, self.position, self._it = d["passes"], d["position"], None


def build_splits(cfg: TrainConfig, prep: Prepared, device: torch.device, shard=(0, 1)):
    ds = prep.ds
    if isinstance(ds, ArrayDataset):
        mean, std = ds.mean_std()
        aug = {"crop_padding": 0, "flip": False} if cfg.augment == "none" else (
            {"crop_padding": 4, "flip": True} if cfg.augment == "crop-flip" else ds.augment)

        def split(x, y):
            return TensorData(x, y, device, mean, std, aug, shard)

        train = split(ds.x_train[prep.train_idx], prep.y_noisy)
        if prep.val_idx is None:
            val = split(ds.x_val, ds.y_val.numpy())
        else:
            val = split(ds.x_train[prep.val_idx], ds.y_train.numpy()[prep.val_idx])
        test = split(ds.x_test, ds.y_test.numpy())
    else:
        train = FileData(ds, [ds.train[i] for i in prep.train_idx], prep.y_noisy, device, cfg.workers, shard)
        if prep.val_idx is None:
            val = FileData(ds, ds.val, [y for _, y in ds.val], device, cfg.workers, shard)
        else:
            val = FileData(ds, [ds.train[i] for i in prep.val_idx], ds.y_train.numpy()[prep.val_idx],
                           device, cfg.workers, shard)
        test = FileData(ds, ds.test, [y for _, y in ds.test], device, cfg.workers, shard)
    return train, val, test


# ----------------------------------------------------------------------------- schedule, eval


def lr_at(cfg: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of an iteration (a pure function: nothing to checkpoint)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    t = (epoch * steps_per_epoch + step) / max(1, cfg.epochs * steps_per_epoch)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * t))


@torch.no_grad()
def evaluate(model, data, batch_size: int, amp: bool, sync=None) -> tuple[float, float]:
    """(accuracy %, mean cross-entropy) without augmentation, in eval mode; under data
    parallelism each rank scores its shard and the counts are summed."""
    if len(data) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    for x, y, _, _ in data.epoch(batch_size, seed=0, augment=False):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        totals[0] += (logits.argmax(1) == y).sum()
        totals[1] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        totals[2] += len(y)
    model.train(was_training)
    if sync is not None:
        totals = sync.allsum(totals)
    correct, loss, n = totals.tolist()
    return 100.0 * correct / n, loss / n


# ----------------------------------------------------------------------------- the loop


def load_pretrained(model: torch.nn.Module, path: str) -> None:
    """Load a local state dict (e.g. ImageNet weights), skipping the classifier whose shape
    differs; no download ever happens."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--pretrained {path}: file not found")
    state = load_checkpoint(path, "cpu")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise ValueError(f"--pretrained {path}: no tensor matches the model {type(model).__name__}")
    model.load_state_dict(kept, strict=False)
    skipped = sorted(set(own) - set(kept))
    print(f"loaded {len(kept)} tensors from {path}; kept the model's own {skipped[:4]}"
          f"{' ...' if len(skipped) > 4 else ''}", flush=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_run(run: str | Path, device: str | torch.device | None = None):
    """A run rebuilt from its directory: ``(cfg, prep, (train, val, test), model)`` with the data,
    noise and split of its config.json and the model's weights of its last checkpoint (train mode)."""
    run = Path(run)
    for name in ("config.json", "checkpoint.pt"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: no {name}; give the directory of an l2b run (its --out)")
    cfg = TrainConfig(**json.loads((run / "config.json").read_text())["config"])
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    prep = prepare_data(cfg, METHODS[cfg.method].needs_clean)
    splits = build_splits(cfg, prep, device)
    ds = prep.ds
    model = create_model(cfg.model, num_classes=ds.num_classes, in_channels=ds.in_channels,
                         image_size=ds.image_size, width=cfg.width).to(device)
    model.load_state_dict(load_checkpoint(run / "checkpoint.pt", device)["model"])
    return cfg, prep, splits, model


def train(cfg: TrainConfig, resume: bool = False, stop_after_epoch: int | None = None,
          overwrite: bool = False) -> dict[str, Any]:
    """Run one experiment into ``cfg.out``; with ``resume`` continue from its checkpoint.

    ``stop_after_epoch`` ends the run after that epoch (0-based) as an interruption would: the
    checkpoint is written, ``metrics.json`` is not; ``resume=True`` later finishes it.
    """
    cfg.validate()
    method_cls = METHODS[cfg.method]
    clip = cfg.resolved_clip()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume from")
    if int(os.environ.get("RANK", "0")) == 0:
        prepare_out(out, asdict(cfg), resume, overwrite)  # before any data are read or models fitted
    device = resolve_device(cfg.device)
    # torchrun: every rank runs this function on its shard of each global batch (l2b.distributed)
    rank, world, local_rank = init_from_env(device.type)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    sync = current_sync()
    main_rank = rank == 0
    amp = cfg.amp and device.type == "cuda"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    prep = prepare_data(cfg, method_cls.needs_clean)
    ds = prep.ds
    train_data, val_data, test_data = build_splits(cfg, prep, device, shard=(rank, world))
    if method_cls.needs_clean and len(val_data) == 0:
        raise ValueError(f"method {cfg.method!r} needs a clean validation set, and it is empty")

    model = create_model(cfg.model, num_classes=ds.num_classes, in_channels=ds.in_channels,
                         image_size=ds.image_size, width=cfg.width)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    if cfg.sync_bn and world > 1:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on the CPU)")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    method = create_method(cfg.method, model, optimizer, **cfg.method_options())
    method.distributed = sync is not None
    method.batch_size = cfg.batch_size
    noisy_data = train_data
    if method.trains_on_clean:  # one shuffled stream over the noisy and the clean samples
        train_data = union(noisy_data, val_data)
    clean = (CleanBatches(val_data, cfg.val_batch_size or cfg.batch_size, cfg.seed,
                          method.opts.get("meta_sampling", "cycle"), augment=getattr(ds, "meta_augment", True))
             if method.needs_clean and method.clean_per_step else None)

    history: list[dict] = []
    best = {"val_acc": -1.0, "epoch": -1, "test_acc": float("nan")}
    start_epoch = 0
    if method.has_setup and not resume and main_rank:
        # Under torchrun rank 0 fits on the whole data and the others receive the result below.
        n_clean_epoch = len(val_data)

        def new_model():
            return create_model(cfg.model, num_classes=ds.num_classes, in_channels=ds.in_channels,
                                image_size=ds.image_size, width=cfg.width).to(device)

        method.setup(SetupContext(
            new_model=new_model,
            new_optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov),
            train_batches=lambda e: noisy_data.epoch(cfg.batch_size, cfg.seed * 15485863 + e, augment=True,
                                                     whole=True),
            clean_batches=lambda e: val_data.epoch(cfg.val_batch_size or cfg.batch_size, cfg.seed * 32452843 + e,
                                                   augment=True, whole=True),
            clean_eval_batches=lambda: val_data.epoch(cfg.eval_batch_size, 0, augment=False, whole=True),
            lr_at=lambda e, s, n: lr_at(cfg, e, s, n),
            epochs=cfg.epochs, num_classes=ds.num_classes,
            train_steps=len(global_batches(torch.arange(len(noisy_data)), cfg.batch_size)),
            clean_steps=len(global_batches(torch.arange(n_clean_epoch), cfg.val_batch_size or cfg.batch_size)),
            log=(lambda text: print(text, flush=True)) if cfg.progress != "none" else (lambda text: None),
        ))
    if method.has_setup and not resume and sync is not None:
        # what rank 0 fitted, and the optimizer state a setup may leave (GLC keeps phase 1's)
        state = [(method.state_dict(), optimizer.state_dict()) if main_rank else None]
        torch.distributed.broadcast_object_list(state, src=0)
        method.load_state_dict(state[0][0])
        optimizer.load_state_dict(state[0][1])
    if resume:
        ck = load_checkpoint(ckpt_path, device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        method.load_state_dict(ck.get("method"))
        if clean is not None:
            clean.load_state_dict(ck["clean"])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        history, best, start_epoch = ck["history"], ck["best"], ck["epoch"] + 1
        if main_rank:  # the epochs of the checkpoint, no more: a kill after the log line and
            # before the checkpoint would otherwise leave a duplicate line
            with open(out / "metrics.jsonl", "w") as fh:
                fh.writelines(json.dumps(finite_json(row)) + "\n" for row in history)
    elif main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("")
        with open(out / "config.json", "w") as fh:
            json.dump({"config": asdict(cfg), "environment": environment(),
                       "data": {"train": len(train_data), "clean_val": len(val_data), "test": len(test_data),
                                "noise_rate": prep.noise_rate, "classes": list(ds.classes)},
                       "resolved": {"clip_grad_norm": clip, "threads": torch.get_num_threads()},
                       "world_size": world}, fh, indent=2)
        np.savez(out / "labels.npz", train_index=prep.train_idx, noisy=prep.y_noisy, true=prep.y_true,
                 is_noisy=prep.y_noisy != prep.y_true, val_index=np.array([]) if prep.val_idx is None else prep.val_idx,
                 transition=prep.transition)

    is_noisy = torch.as_tensor(prep.y_noisy != prep.y_true, device=device)
    n_train = len(train_data)
    n_epoch = n_train if cfg.batches_per_epoch is None else cfg.batches_per_epoch * cfg.batch_size
    steps_per_epoch = max(1, math.ceil(n_epoch / cfg.batch_size) - (n_epoch % cfg.batch_size == 1 and n_epoch > 1))
    writer = tensorboard(out) if main_rank else None
    bar = Progress(cfg.progress if main_rank else "none", (cfg.epochs - start_epoch) * steps_per_epoch,
                   f"{cfg.method} {cfg.noise}")
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        warm = epoch < cfg.warmup_epochs
        alpha = torch.zeros(n_train, device=device)
        beta = torch.zeros(n_train, device=device)
        pseudo = torch.full((n_train,), -1, dtype=torch.int64, device=device)
        # accumulated on the device: no host sync inside the step loop
        loss_sum = torch.zeros((), device=device)
        first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite step
        step_weight_sums = []  # per step: this rank's sum of alpha + beta
        seen, steps, weighted = 0, 0, False
        batches = train_data.epoch(cfg.batch_size, cfg.seed * 100003 + epoch, augment=True,
                                   batches=cfg.batches_per_epoch, balanced=cfg.balance_classes)
        for step, (x, y, idx, n_global) in enumerate(batches):
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, epoch, step, steps_per_epoch)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                progress = epoch + step / steps_per_epoch
                if method.trains_on_clean:
                    batch = Batch(x, y, idx, epoch=progress, trusted=idx >= len(noisy_data))
                elif warm or clean is None:
                    batch = Batch(x, y, idx, epoch=progress)
                else:
                    batch = Batch(x, y, idx, *clean.next(), epoch=progress)
                if warm:
                    result = None
                    loss = method.warmup_loss(batch)
                else:
                    try:
                        result = method.loss(batch)
                    except NonFiniteWeights as err:  # the model diverged inside the meta step
                        diverged(out, epoch, step, main_rank, str(err))
                    loss = result.loss
            optimizer.zero_grad(set_to_none=True)
            if sync is None:
                loss.backward()
            else:
                # the global loss is the SUM over ranks of a global-sum loss (meta methods), or
                # of each rank's mean weighted by its share of the global batch
                global_sum = result is not None and method.loss_is_global_sum
                (loss if global_sum else loss * (len(y) / n_global)).backward()
                all_reduce_grads(model.parameters(), op="sum")
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            # the global step's loss: a global-sum loss is this rank's part of it (counted with
            # the global batch size); a mean is this rank's (counted with its share)
            loss_sum += loss.detach().float() * (n_global if result is not None and method.loss_is_global_sum
                                                 and sync is not None else len(y))
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            seen += len(y)
            steps += 1
            if result is not None and result.alpha is not None:
                alpha[idx], beta[idx] = result.alpha.float(), result.beta.float()
                if result.pseudo_labels is not None:
                    pseudo[idx] = result.pseudo_labels
                step_weight_sums.append(result.alpha.sum() + result.beta.sum())
                weighted = True
            bar.update()
        train_time = time.perf_counter() - t0
        zero_steps = torch.zeros((), device=device)
        if step_weight_sums:
            sums = torch.stack(step_weight_sums).float()
            zero_steps = ((sums if sync is None else sync.allsum(sums)) == 0).sum()
        if sync is not None:  # every rank filled the weights of its own samples
            alpha, beta, pseudo = sync.allsum(alpha), sync.allsum(beta), sync.allmax(pseudo)
            loss_sum = sync.allsum(loss_sum)
            seen = int(sync.allsum(torch.tensor(float(seen), device=device)))
            first_bad = sync.allmax(first_bad)
        check_finite(model, first_bad, epoch, out, main_rank)
        val_acc, val_loss = evaluate(model, val_data, cfg.eval_batch_size, amp, sync)
        test_acc, test_loss = evaluate(model, test_data, cfg.eval_batch_size, amp, sync)
        if val_acc > best["val_acc"]:  # selection on the clean validation set only
            best = {"val_acc": val_acc, "epoch": epoch, "test_acc": test_acc}
            if main_rank:
                atomic_save(model.state_dict(), out / "best_model.pt")
        row = {
            "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum.item() / max(seen, 1),
            "val_acc": val_acc, "val_loss": val_loss, "test_acc": test_acc, "test_loss": test_loss,
            "epoch_seconds": train_time, "warmup": warm,
            # mean per-sample weights on clean vs corrupted samples (None: the method has none)
            "alpha_clean": _mean(alpha, ~is_noisy) if weighted else None,
            "alpha_noisy": _mean(alpha, is_noisy) if weighted else None,
            "beta_clean": _mean(beta, ~is_noisy) if weighted else None,
            "beta_noisy": _mean(beta, is_noisy) if weighted else None,
            "all_zero_step_share": zero_steps.item() / max(steps, 1) if weighted else None,
        }
        history.append(row)
        if main_rank:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(finite_json(row)) + "\n")
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    writer.add_scalar(k, v, epoch)
        if epoch == cfg.epochs - 1 and weighted and main_rank:
            np.savez(out / "weights.npz", alpha=alpha.cpu().numpy(), beta=beta.cpu().numpy(),
                     pseudo_labels=pseudo.cpu().numpy(), is_noisy=is_noisy.cpu().numpy(),
                     noisy=prep.y_noisy, true=prep.y_true, train_index=prep.train_idx)
        if main_rank:
            atomic_save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "method": method.state_dict(),
                "clean": clean.state_dict() if clean is not None else None,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                "epoch": epoch, "history": history, "best": best, "world_size": world,
            }, ckpt_path)
        if sync is not None:
            torch.distributed.barrier()  # the checkpoint is complete before any rank goes on
        bar.epoch_done(
            f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} val {val_acc:.2f} "
            f"test {test_acc:.2f} ({train_time:.1f}s)"
        )
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs - 1:
            bar.close()
            return {"interrupted_after_epoch": epoch, "history": history}
    bar.close()
    if writer is not None:
        writer.close()
    metrics = {
        "method": cfg.method, "noise": cfg.noise, "seed": cfg.seed,
        "test_acc_last": history[-1]["test_acc"], "test_acc_at_best_val": best["test_acc"],
        "best_val_acc": best["val_acc"], "best_epoch": best["epoch"], "noise_rate": prep.noise_rate,
        "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in history])), "history": history,
    }
    if main_rank:
        with open(out / "metrics.json", "w") as fh:
            json.dump(finite_json(metrics), fh, indent=2, allow_nan=False)
    if sync is not None:
        torch.distributed.barrier()  # every rank returns after the run is complete on disk
    return metrics


class TrainingDiverged(ValueError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""


def check_finite(model: torch.nn.Module, first_bad: torch.Tensor, epoch: int, out: Path, main_rank: bool) -> None:
    """Stop a run whose loss or parameters became NaN/inf this epoch, before its checkpoint is
    written: the checkpoint on disk stays the last good one, and metrics.json records where."""
    step = int(first_bad)
    params_ok = bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())
    if step < 0 and params_ok:
        return
    diverged(out, epoch, step if step >= 0 else None, main_rank,
             "the training loss" if step >= 0 else "the model's parameters")


def diverged(out: Path, epoch: int, step: int | None, main_rank: bool, what: str) -> None:
    """Record in metrics.json where the run diverged and raise ``TrainingDiverged``."""
    if main_rank:
        with open(out / "metrics.json", "w") as fh:
            json.dump({"diverged": {"epoch": epoch, "step": step, "what": what}}, fh, indent=2)
    where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
    kept = (f"{out / 'checkpoint.pt'} keeps epoch {epoch}" if epoch > 0 and (out / "checkpoint.pt").is_file()
            else "no checkpoint was written")
    if what.startswith("meta_weights: "):
        what = what[len("meta_weights: "):].split(";")[0]
        raise TrainingDiverged(f"the run diverged at {where}: {what} ({kept}); lower --lr, or clip the "
                               "gradient norm (--clip-grad-norm, e.g. 0.8)")
    raise TrainingDiverged(
        f"{what} became NaN or inf at {where} ({kept}); lower --lr, or clip the gradient "
        f"norm (--clip-grad-norm, e.g. 0.8)")


def finite_json(obj):
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    return float(values[mask].mean()) if mask.any() else None
