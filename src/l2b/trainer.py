"""The training loop: data, noise, model, method, schedule, evaluation, logging, checkpoints.

Read top to bottom: ``train(cfg)`` runs one experiment (``l2b.config.TrainConfig``) into
``cfg.out`` and returns its final metrics. A method (``l2b.methods``) is called through its
hooks (``needs``, ``setup``, ``on_epoch_start``, ``loss``, ``state_dict``); it never touches this
loop, and the loop reads nothing else about it.

Model selection uses the CLEAN VALIDATION set only, scored every epoch; the test set is scored
every ``test_every`` epochs, at the last epoch and (from its saved weights) at the best-validation
epoch, and reported twice: at the last epoch and at the best-validation epoch (the authors' code
selected on the test set; docs/methods.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .console import first_rank
from .data.batches import CleanBatches, union
from .data.reader import close_readers
from .distributed import current_sync
from .methods import create_method, learns_from_clean, needs_of
from .models import is_custom
from .models.custom import load_builder
from .metaset import MetaSetSelector, parse_meta_set
from .run_data import (build_splits, check_same_data, data_fingerprint, data_line, has_test, model_inputs,
                       prepare_data, truth_in_words, warn)
from .loop import EpochLog, Training, WeightHistory, check_finite, evaluate, evaluate_saved, fit_sample, train_step
from .memorisation import early_epoch, fit_gaps
from .run_state import EPOCH_ORDER_SALT, checkpoint_state, epoch_context, restore_checkpoint, run_setup
from .rundir import (Progress, append_row, atomic_json, atomic_npz, atomic_save, environment, finite_json,
                     load_checkpoint, prepare_out, read_json, rewrite_rows, tensorboard)
from .run_model import (build_model, build_optimizer, deterministic_kernels, kept_source, own_builder, resolve_device,
                        start_ranks, training_model, usable_device)
from .runlock import RunLock


# ----------------------------------------------------------------------------- the loop


def needs_clean_set(cfg: TrainConfig) -> bool:
    """Whether the run needs a verified clean set: its method reads one, and no ``--meta-set
    select:KIND`` builds the meta set from the training data instead."""
    return needs_of(cfg.method, cfg.method_options()).clean and parse_meta_set(cfg.meta_set) is None


def located_spec(spec: str) -> str:
    """``NAME:PATH`` with PATH made absolute (as the run found it), so that a run directory can be
    loaded again from another working directory; a spec without a path as it is."""
    name, sep, path = spec.partition(":")
    return f"{name}:{Path(path).resolve()}" if sep and path else spec


def record_data_place(out: Path, spec: str) -> None:
    """A resumed run whose data moved (``--resume DIR --data SPEC``, the same data by its
    fingerprint): its config.json names the new place, for what reads the run after."""
    saved = read_json(out / "config.json", need=("config",))
    if saved["config"].get("data") == spec:
        return
    saved["config"]["data"] = spec
    saved.setdefault("data", {})["located"] = located_spec(spec)
    atomic_json(out / "config.json", saved, indent=2)


def _found_data(cfg: TrainConfig, saved: dict) -> TrainConfig:
    """``cfg`` with its data spec as the run located it when a relative path no longer resolves
    from here (``l2b label-issues`` run from another directory)."""
    _, sep, path = cfg.data.partition(":")
    located = saved.get("data", {}).get("located")
    if not sep or not path or Path(path).exists() or not located:
        return cfg
    return replace(cfg, data=located) if Path(located.partition(":")[2]).exists() else cfg


def load_run(run: str | Path, device: str | torch.device | None = None, data: str | None = None):
    """A run rebuilt from its directory: ``(cfg, prep, (train, val, test), model)`` with the data,
    noise and split of its config.json and the model's weights of its last checkpoint (train mode).
    ``data``: the run's dataset where it is now, when it moved since; checked, as the data always
    is, against the run's record of its labels."""
    run = Path(run)
    for name in ("config.json", "checkpoint.pt"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: no {name}; give the directory of an l2b run (its --out)")
    saved = read_json(run / "config.json", need=("config",))
    cfg = _found_data(TrainConfig.from_dict(saved["config"], str(run / "config.json")), saved)
    cfg = cfg if data is None else replace(cfg, data=data)
    device = resolve_device(usable_device(cfg.device)) if device is None else torch.device(device)
    try:
        prep = prepare_data(cfg, needs_clean_set(cfg))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} (the data of the run {run}); if it moved since the run trained, give where "
                                f"it is now with --data") from None
    splits = build_splits(cfg, prep, device)
    check_same_data(run, data_fingerprint(cfg, prep, splits), resuming=False)
    model = build_model(cfg, prep.ds, device, own_builder(cfg, saved, run))
    model.load_state_dict(load_checkpoint(run / "checkpoint.pt", device)["model"])
    return cfg, prep, splits, model


def final_metrics(cfg: TrainConfig, history: list[dict], best: dict, noise_rate: float,
                  setup_seconds: float = 0.0) -> dict[str, Any]:
    """metrics.json: the test accuracy at the last and at the best clean-validation epoch; the
    mean seconds of an epoch's training, and the whole run's seconds (the method's setup, e.g.
    GLC's first phase, plus every epoch's training and evaluation)."""
    return {"method": cfg.method, "noise": cfg.noise, "seed": cfg.seed,
            "test_acc_last": history[-1]["test_acc"], "test_acc_at_best_val": best["test_acc"],
            "best_val_acc": best["val_acc"], "best_epoch": best["epoch"], "early_epoch": early_epoch(fit_gaps(history)),
            "noise_rate": noise_rate,
            "epoch_seconds": float(np.mean([h["epoch_seconds"] for h in history])),
            "setup_seconds": setup_seconds,
            "total_seconds": setup_seconds + sum(h["epoch_seconds"] + h.get("eval_seconds", 0.0) for h in history),
            "history": history}


def write_run_header(out: Path, cfg: TrainConfig, prep, splits, clip: float | None, world: int,
                     method_options: dict | None = None) -> None:
    """A new run's config.json (settings, environment, data sizes) and labels.npz (the split,
    the noisy and true labels, the realised transition matrix); an empty metrics.jsonl."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("")
    train_data, val_data, test_data = splits
    atomic_json(out / "config.json", {
        "config": asdict(cfg), "environment": environment(),
        "data": {"train": len(train_data), "clean_val": len(val_data), "test": len(test_data),
                 "noise_rate": prep.noise_rate, "classes": list(prep.ds.classes),
                 "fingerprint": data_fingerprint(cfg, prep, splits), "located": located_spec(cfg.data),
                 "inputs": model_inputs(prep.ds)},
        "resolved": {"clip_grad_norm": clip, "threads": torch.get_num_threads(), "method_options": method_options or {}},
        "world_size": world, **({"model_source": kept_source(cfg.model, out)} if is_custom(cfg.model) else {})},
        indent=2)
    atomic_npz(out / "labels.npz", train_index=prep.train_idx, noisy=prep.y_noisy, true=prep.y_true,
               is_noisy=prep.y_noisy != prep.y_true, val_index=np.array([]) if prep.val_idx is None else prep.val_idx,
               transition=prep.transition)


def train(cfg: TrainConfig, resume: bool = False, stop_after_epoch: int | None = None,
          overwrite: bool = False, on_epoch=None) -> dict[str, Any]:
    """Run one experiment into ``cfg.out``; with ``resume`` continue from its checkpoint.

    ``stop_after_epoch`` ends the run after that epoch (0-based) as an interruption would: the
    checkpoint is written, ``metrics.json`` is not; ``resume=True`` later finishes it.
    ``on_epoch(row)``: called by the main process after each epoch's checkpoint is written, with
    that epoch's row of metrics.jsonl (a copy); an exception it raises stops the run there, as an
    interruption would.
    """
    cfg.validate()
    threads = cfg.resolved_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    again = resume and not ckpt_path.is_file()  # stopped before its first epoch ended: it begins again, as set
    if again and (not (out / "config.json").is_file() or (out / "metrics.json").is_file()):
        raise FileNotFoundError(f"{ckpt_path}: no checkpoint to resume from")
    if again and first_rank() and cfg.progress != "none":
        print(f"{out}: no epoch had finished before it stopped; it starts again from epoch 1", flush=True)
    if is_custom(cfg.model) and not resume:
        load_builder(cfg.model)  # found, imported and callable, before anything is written or read
    lock = RunLock(out)
    if first_rank():
        lock.acquire()  # one run per directory, before anything in it is touched
    try:
        if first_rank():
            prepare_out(out, asdict(cfg), resume, overwrite, asdict(TrainConfig()))  # before any data or fits
        with deterministic_kernels(cfg.deterministic):
            return _train_locked(cfg, resume and not again, stop_after_epoch, on_epoch)
    except BaseException:
        if not resume:  # a new run that failed: its lock file goes, and the directories it made while still empty
            lock.abandon()  # (bad settings, data or a method's fit: nothing is left behind)
        raise
    finally:
        lock.release()


def _train_locked(cfg: TrainConfig, resume: bool, stop_after_epoch: int | None, on_epoch) -> dict[str, Any]:
    clip = cfg.resolved_clip()
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    try:
        device, rank, world = start_ranks(cfg)
        sync = current_sync()
        main_rank = rank == 0
        amp = cfg.amp and device.type == "cuda"
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)

        needs = needs_of(cfg.method, cfg.method_options())
        select_kind = parse_meta_set(cfg.meta_set)  # None: the verified clean set feeds the meta steps
        clean_needed = needs_clean_set(cfg)
        prep = prepare_data(cfg, clean_needed)
        ds = prep.ds
        train_data, val_data, test_data = build_splits(cfg, prep, device, shard=(rank, world))
        if clean_needed and len(val_data) == 0:
            raise ValueError(f"method {cfg.method!r} needs a clean validation set, and it is empty")
        if resume:
            check_same_data(out, data_fingerprint(cfg, prep, (train_data, val_data, test_data)))
            if main_rank:
                record_data_place(out, cfg.data)
    except FileNotFoundError as err:
        if resume and cfg.data.partition(":")[2] in str(err):
            raise FileNotFoundError(f"{err} (the data the run began on; if it moved, give where it is now: "
                                    f"l2b train --resume {out} --data SPEC)") from None
        raise

    source = own_builder(cfg, read_json(out / "config.json"), out) if resume else None
    model = training_model(cfg, ds, device, world, source)
    optimizer = build_optimizer(cfg, model)
    method = create_method(cfg.method, model, optimizer, num_classes=ds.num_classes, batch_size=cfg.batch_size,
                           distributed=sync is not None, **cfg.method_options())
    noisy_data = train_data
    if needs.clean_in_stream or cfg.train_on_clean:  # one shuffled stream over the noisy and the clean samples
        if len(val_data) == 0:
            raise ValueError("--train-on-clean needs a clean set: give --val-per-class K or --val-total M, "
                             "or use a dataset with its own clean set")
        train_data = union(noisy_data, val_data)
    meta_augment = getattr(ds, "meta_augment", True)
    clean = (CleanBatches(val_data, cfg.val_batch_size or cfg.batch_size, cfg.seed, needs.clean_sampling,
                          augment=meta_augment) if needs.clean_per_step and select_kind is None else None)
    selector = None
    if select_kind is not None:
        if len(val_data) and main_rank:
            warn(f"a clean set of {len(val_data)} ({prep.clean_source}) is given, and --meta-set {cfg.meta_set} "
                 f"replaces it: it is used for nothing, neither the meta steps nor model selection")
        selector = MetaSetSelector(select_kind, cfg.meta_set_size, cfg.meta_refresh, cfg.warmup_epochs, out,
                                   prep.y_true, list(ds.classes), cfg.eval_batch_size, main_rank,
                                   leaves=cfg.meta_set_leaves, seed=cfg.seed, truth=truth_in_words(cfg))
    others = {"meta_set": selector} if selector is not None else {}
    weights = WeightHistory(cfg.weight_epochs, len(noisy_data), device)  # for l2b label-issues
    # how often the model agrees with its training labels, beside its accuracy on the clean set when
    # that is held out: when it starts to memorise them (l2b.memorisation; early_model.pt)
    held_out = selector is None and len(val_data) and not learns_from_clean(cfg.method, method.opts, cfg.train_on_clean)
    fitted = fit_sample(noisy_data, cfg.seed) if held_out else None

    history, best = [], {"val_acc": -1.0, "epoch": -1, "test_acc": float("nan")}
    start_epoch, setup_seconds, saved_clean = 0, 0.0, None
    if resume:
        history, best, start_epoch, setup_seconds, saved_clean = restore_checkpoint(
            ckpt_path, device, model, optimizer, method, clean, weights, others)
        if main_rank:  # the epochs of the checkpoint, no more (a kill between log line and checkpoint)
            rewrite_rows(out, history)
    if main_rank and cfg.progress != "none":  # first, before a method's setup trains anything (GLC, distill)
        print(data_line(cfg, prep, (noisy_data, val_data, test_data), start_epoch), flush=True)
    if not resume:
        setup_seconds = run_setup(cfg, method, optimizer, noisy_data, val_data, ds, device, sync, main_rank,
                                  new_model=lambda: build_model(cfg, ds, device, source),
                                  new_optimizer=lambda m: build_optimizer(cfg, m))
        if main_rank:
            write_run_header(out, cfg, prep, (train_data, val_data, test_data), clip, world, method.opts)
    is_noisy = torch.as_tensor(prep.y_noisy != prep.y_true, device=device)
    tested = has_test(prep)  # your own data may come without a test set: its accuracy is then None
    n_train = len(train_data)
    n_epoch = n_train if cfg.batches_per_epoch is None else cfg.batches_per_epoch * cfg.batch_size
    steps_per_epoch = max(1, math.ceil(n_epoch / cfg.batch_size) - (n_epoch % cfg.batch_size == 1 and n_epoch > 1))
    writer = tensorboard(out) if main_rank else None
    bar = Progress(cfg.progress if main_rank else "none", (cfg.epochs - start_epoch) * steps_per_epoch,
                   f"{cfg.method} {cfg.noise}")
    model.train()
    run = Training(cfg, model, optimizer, method, clean, sync, clip, amp, out, main_rank, len(noisy_data),
                   steps_per_epoch, needs.clean_in_stream, saved_clean if resume else None)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            warm = epoch < cfg.warmup_epochs
            ctx = epoch_context(cfg, run, epoch, warm, noisy_data, val_data, meta_augment, needs.clean_sampling)
            method.on_epoch_start(epoch, ctx)
            if selector is not None:  # --meta-set select: the meta set from the noisy data
                selector.on_epoch_start(epoch, ctx)
            log = EpochLog(n_train, device)
            batches = train_data.epoch(cfg.batch_size, cfg.seed * EPOCH_ORDER_SALT + epoch, augment=True,
                                       batches=cfg.batches_per_epoch, balanced=cfg.balance_classes)
            for step, (x, y, idx, n_global) in enumerate(batches):
                loss, result, count = train_step(run, x, y, idx, n_global, epoch, step, warm)
                log.add(step, loss, result, idx, len(y), count)
                bar.update()
            train_time = time.perf_counter() - t0
            log.reduce(sync)
            weights.push(log)
            check_finite(model, log.first_bad, epoch, out, main_rank)
            if not warm and log.weighted and log.steps and log.zero_steps.item() == log.steps:
                raise ValueError(
                    f"epoch {epoch + 1}: every step's per-sample weights were all zero, so the model did not train "
                    f"(method {cfg.method}, options {method.opts}); loosen the setting that zeroes them (e.g. a lower "
                    f"--threshold with --normalize hard) or use another --normalize")
            t0 = time.perf_counter()
            # model selection: the clean set, or with --meta-set select the selected set (biased: the
            # model chose it), nothing before the selection
            selection_data = val_data if selector is None else selector.selected
            val_acc, val_loss = (evaluate(model, selection_data, cfg.eval_batch_size, amp, sync)
                                 if selection_data is not None else (float("nan"), float("nan")))
            fit_acc = evaluate(model, fitted, cfg.eval_batch_size, amp, sync)[0] if fitted is not None else None
            test_acc = test_loss = None
            if tested and (epoch == cfg.epochs - 1 or (epoch + 1) % cfg.test_every == 0):
                test_acc, test_loss = evaluate(model, test_data, cfg.eval_batch_size, amp, sync)
            if val_acc > best["val_acc"]:  # selection on the clean validation set only
                best = {"val_acc": val_acc, "epoch": epoch, "test_acc": test_acc}  # None: scored at the end
                if main_rank:
                    atomic_save(model.state_dict(), out / "best_model.pt")
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": log.mean_loss(),
                   "val_acc": val_acc, "val_loss": val_loss, "train_fit": fit_acc, "test_acc": test_acc,
                   "test_loss": test_loss, "epoch_seconds": train_time, "eval_seconds": time.perf_counter() - t0,
                   "warmup": warm, **log.weight_summary(is_noisy)}
            history.append(row)
            if main_rank and fit_acc is not None and early_epoch(fit_gaps(history)) == epoch:
                atomic_save(model.state_dict(), out / "early_model.pt")  # not memorising yet
            if main_rank:
                append_row(out, row, writer)
            if epoch == cfg.epochs - 1 and log.weighted and main_rank:
                log.save_weights(out / "weights.npz", is_noisy, prep, weights)
            if main_rank:
                atomic_save(checkpoint_state(model, optimizer, method, run.clean, weights, epoch, history, best, world,
                                             setup_seconds, others), ckpt_path)
            if sync is not None:
                torch.distributed.barrier()  # the checkpoint is complete before any rank goes on
            bar.epoch_done(
                f"epoch {epoch + 1}/{cfg.epochs} loss {row['train_loss']:.4f} "
                + (f"val {val_acc:.2f} " if math.isfinite(val_acc) else "val - ")  # nothing to select on yet
                + (f"test {test_acc:.2f} " if test_acc is not None else "") + f"({train_time:.1f}s)"
            )
            if on_epoch is not None and main_rank:
                on_epoch(dict(row))
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.epochs - 1:
                bar.close()
                return {"interrupted_after_epoch": epoch, "history": history}
    finally:
        if run.clean is not None:  # an image-file clean set's loader workers stop with the training
            run.clean.close()
        close_readers(ds)  # and those kept for the passes over image files (l2b.data.reader)
    bar.close()
    if writer is not None:
        writer.close()
    if best["test_acc"] is None and tested:  # --test-every skipped the best epoch: score its saved weights
        best["test_acc"] = evaluate_saved(model, out / "best_model.pt", test_data, cfg.eval_batch_size, amp, sync)
    metrics = final_metrics(cfg, history, best, prep.noise_rate, setup_seconds)
    if selector is not None:  # no verified clean set: the last epoch is the number to report
        metrics["model_selection"] = "selected meta set (biased: the model chose it); report test_acc_last"
        metrics["meta_set"] = [{k: r[k] for k in ("epoch", "kind", "per_class", "size", "purity", "per_class_found")}
                               for r in selector.records]
    if main_rank:
        atomic_json(out / "metrics.json", finite_json(metrics), indent=2, allow_nan=False)
    if sync is not None:
        torch.distributed.barrier()  # every rank returns after the run is complete on disk
    return metrics
