"""What a run's hooks receive and what its checkpoint holds: the ``SetupContext`` of a method's
``setup`` (``run_setup``), the ``EpochContext`` of ``on_epoch_start`` (``epoch_context``), and
the checkpoint's state (``checkpoint_state`` / ``restore_checkpoint``); the seed salts of a run's
random streams."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .config import TrainConfig
from .data.batches import CleanBatches, exclude, global_batches
from .loop import Training, lr_at
from .methods.base import EpochContext, SetupContext
from .rundir import load_checkpoint

# Seed salts: each stream of random numbers of a run is seeded by the run's seed times its own
# prime, so that no two streams coincide and each is a pure function of (seed, epoch).
EPOCH_ORDER_SALT = 100003  # the training batches of epoch e: seed * salt + e
SETUP_NOISY_SALT = 15485863  # a setup's fit on the noisy samples (GLC, forward)
SETUP_CLEAN_SALT = 32452843  # a setup's fit on the clean samples (distill)
EPOCH_CLEAN_SALT = 49979687  # the clean batches of a clean set a method sets at epoch e: seed * salt + e


def epoch_context(cfg: TrainConfig, run: Training, epoch: int, warm: bool, noisy_data, val_data, meta_augment: bool,
                  needs_sampling: str = "cycle"):
    """The ``EpochContext`` of a method's ``on_epoch_start``: ``set_clean`` gives the steps that
    follow fresh clean batches of another split, shuffled by the run's seed and the epoch."""

    def set_clean(data, since_epoch: int | None = None) -> None:
        """``since_epoch``: the epoch this set was first made at (a set kept across epochs keeps
        its batches' order, and a resumed run continues it where the checkpoint left it)."""
        if len(data) == 0:
            raise ValueError(f"epoch {epoch + 1}: the method set an empty clean set")
        seed = cfg.seed * EPOCH_CLEAN_SALT + (epoch if since_epoch is None else since_epoch)
        if run.clean is not None and run.clean.seed == seed and run.clean.data is data:
            return  # the same set, already in use
        if run.clean is not None:
            run.clean.close()
        run.clean = CleanBatches(data, cfg.val_batch_size or cfg.batch_size, seed, needs_sampling,
                                 augment=meta_augment)
        if run.resume_clean is not None and run.resume_clean.get("seed") == seed:
            run.clean.load_state_dict(run.resume_clean)  # resumed mid-way through this set's batches
        run.resume_clean = None

    return EpochContext(epoch=epoch, warm=warm, model=run.model, train=noisy_data,
                        clean=run.clean.data if run.clean is not None else val_data, take=noisy_data.take,
                        set_clean=set_clean, exclude=lambda indices: exclude(noisy_data, indices),
                        log=(lambda text: print(text, flush=True)) if cfg.progress != "none" else (lambda text: None))


def run_setup(cfg, method, optimizer, noisy_data, val_data, ds, device, sync, main_rank: bool, new_model,
              new_optimizer) -> float:
    """A method's fit before training (GLC's phase 1, forward's estimator, distill's teacher);
    returns its seconds. Under torchrun rank 0 fits on the whole data and broadcasts what it
    fitted, with the optimizer state it may leave (GLC keeps phase 1's)."""
    start = time.perf_counter()
    if main_rank:
        val_bs = cfg.val_batch_size or cfg.batch_size
        method.setup(SetupContext(
            new_model=new_model,
            new_optimizer=new_optimizer,
            train_batches=lambda e: noisy_data.epoch(cfg.batch_size, cfg.seed * SETUP_NOISY_SALT + e, augment=True,
                                                     whole=True),
            clean_batches=lambda e: val_data.epoch(val_bs, cfg.seed * SETUP_CLEAN_SALT + e, augment=True, whole=True),
            clean_eval_batches=lambda: val_data.epoch(cfg.eval_batch_size, 0, augment=False, whole=True),
            lr_at=lambda e, s, n: lr_at(cfg, e, s, n),
            epochs=cfg.epochs, num_classes=ds.num_classes,
            train_steps=len(global_batches(torch.arange(len(noisy_data)), cfg.batch_size)),
            clean_steps=len(global_batches(torch.arange(len(val_data)), val_bs)),
            log=(lambda text: print(text, flush=True)) if cfg.progress != "none" else (lambda text: None),
            load_optimizer_state=optimizer.load_state_dict,
        ))
    if sync is not None:
        state = [(method.state_dict(), optimizer.state_dict()) if main_rank else None]
        torch.distributed.broadcast_object_list(state, src=0)
        method.load_state_dict(state[0][0])
        optimizer.load_state_dict(state[0][1])
    return time.perf_counter() - start


def checkpoint_state(model, optimizer, method, clean, weights, epoch: int, history, best, world: int,
                     setup_seconds: float = 0.0, others: dict | None = None) -> dict:
    """Everything a resumed run needs, in tensors and plain containers (weights_only loading);
    ``others``: more objects with a state (name -> object), e.g. the meta-set selector."""
    return {**{name: obj.state_dict() for name, obj in (others or {}).items()},
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "method": method.state_dict(),
        "clean": clean.state_dict() if clean is not None else None, "weights": weights.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "epoch": epoch, "history": history, "best": best, "world_size": world, "setup_seconds": setup_seconds,
    }


def restore_checkpoint(path: Path, device, model, optimizer, method, clean, weights,
                       others: dict | None = None) -> tuple[list, dict, int, float, dict | None]:
    """Load a checkpoint into the run's objects and RNGs; returns (history, best, next epoch,
    seconds of the method's setup, the saved clean batches' state)."""
    ck = load_checkpoint(path, device)
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    method.load_state_dict(ck.get("method"))
    for name, obj in (others or {}).items():
        obj.load_state_dict(ck.get(name))
    saved_clean = ck.get("clean")
    if clean is not None and saved_clean is not None and saved_clean.get("seed", clean.seed) == clean.seed:
        clean.load_state_dict(saved_clean)
    weights.load_state_dict(ck.get("weights"))
    # RNG states are CPU byte tensors; map_location=device moved them with everything else
    torch.set_rng_state(ck["rng"]["torch"].cpu())
    if ck["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in ck["rng"]["cuda"]])
    return ck["history"], ck["best"], ck["epoch"] + 1, float(ck.get("setup_seconds", 0.0)), saved_clean
