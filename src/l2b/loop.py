"""One training step and one epoch's bookkeeping: the learning-rate schedule, the step (loss,
backward, clipping, optimizer), what an epoch accumulates, evaluation, and stopping a run that
diverged. ``l2b.trainer.train`` strings these together; ``l2b.run_state`` holds what the hooks and checkpoints carry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import TrainConfig
from .data.batches import CleanBatches
from .distributed import all_reduce_grads
from .meta import NonFiniteWeights
from .methods import Batch
from .models import eval_mode
from .rundir import atomic_json, atomic_npz, load_checkpoint


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
    device = next(model.parameters()).device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # correct, loss sum, count
    with eval_mode(model):
        for x, y, _, _ in data.epoch(batch_size, seed=0, augment=False):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            totals[0] += (logits.argmax(1) == y).sum()
            totals[1] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            totals[2] += len(y)
    if sync is not None:
        totals = sync.allsum(totals)
    correct, loss, n = totals.tolist()
    return 100.0 * correct / n, loss / n


def evaluate_saved(model, path: Path, data, batch_size: int, amp: bool, sync=None) -> float:
    """The accuracy of the weights saved in ``path`` (a state dict of ``model``); the model's
    own weights are put back afterwards."""
    if sync is not None:
        torch.distributed.barrier()  # rank 0 has finished writing the file
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(load_checkpoint(path, next(model.parameters()).device))
    try:
        return evaluate(model, data, batch_size, amp, sync)[0]
    finally:
        model.load_state_dict(current)


FIT_SAMPLES = 2_000  # at most this many training samples measure an epoch's agreement with their labels


def fit_sample(data, seed: int):
    """The noisy training samples whose agreement with their labels an epoch measures: all of them,
    or FIT_SAMPLES of them drawn once (by ``seed``, from its own generator: training's draws are
    untouched)."""
    if len(data) <= FIT_SAMPLES:
        return data
    return data.take(np.sort(np.random.Generator(np.random.PCG64(seed)).choice(len(data), FIT_SAMPLES, replace=False)))


@dataclass
class Training:
    """What every training step of a run reads."""

    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    method: Any
    clean: CleanBatches | None
    sync: Any
    clip: float | None
    amp: bool
    out: Path
    main_rank: bool
    n_noisy: int  # training positions >= this are clean samples (with clean_in_stream)
    steps_per_epoch: int
    clean_in_stream: bool = False  # the method's needs(): Batch.trusted marks the clean samples
    resume_clean: dict | None = None  # a resumed run's saved clean-batch position, for the set it belongs to


LONE_SAMPLE = "Expected more than 1 value per channel when training"  # torch's BatchNorm on one value


def lone_sample_error(cfg: TrainConfig, epoch: int, step: int) -> ValueError:
    """What to change when a BatchNorm layer met one sample at a 1x1 feature map (small images
    through a deep model, and a batch, or a part of one, of a single sample)."""
    clean = cfg.val_batch_size or cfg.batch_size
    return ValueError(
        f"epoch {epoch + 1}, step {step + 1}: a BatchNorm layer of --model {cfg.model} got a single sample "
        f"where its feature map is 1x1, and cannot normalise it; give batches of 2 or more (--batch-size "
        f"{cfg.batch_size}, --val-batch-size {clean}; 4 or more for mlc, whose mix mode halves each clean batch), "
        f"or a model without BatchNorm (--model mlp)")


def train_step(run: Training, x, y, idx, n_global: int, epoch: int, step: int, warm: bool):
    """One step: the method's loss (plain cross-entropy during warm-up), backward (all-reduced
    under torchrun), clipping, the optimizer step. Returns (loss, the method's StepOutput or None,
    how many samples the loss stands for in the epoch's mean: the global batch for a global-sum
    loss under torchrun, whose rank part this is; else this rank's batch)."""
    cfg, method, optimizer = run.cfg, run.method, run.optimizer
    if cfg.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, epoch, step, run.steps_per_epoch)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=run.amp):
        progress = epoch + step / run.steps_per_epoch
        if run.clean_in_stream:
            batch = Batch(x, y, idx, epoch=progress, trusted=idx >= run.n_noisy)
        elif warm or run.clean is None:
            batch = Batch(x, y, idx, epoch=progress)
        else:
            batch = Batch(x, y, idx, *run.clean.next(), epoch=progress)
        result = None
        try:
            if warm:
                loss = method.warmup_loss(batch)
            else:
                try:
                    result = method.loss(batch)
                except NonFiniteWeights as err:  # the model diverged inside the meta step
                    diverged(run.out, epoch, step, run.main_rank, "the meta step", detail=err.cause)
                loss = result.loss
        except ValueError as err:
            if LONE_SAMPLE not in str(err):
                raise
            raise lone_sample_error(cfg, epoch, step) from None
    optimizer.zero_grad(set_to_none=True)
    # the global loss is the SUM over ranks of a global-sum loss (meta methods), or of each rank's
    # mean weighted by its share of the global batch
    global_sum = run.sync is not None and result is not None and result.reduction == "global_sum"
    if run.sync is None:
        loss.backward()
    else:
        (loss if global_sum else loss * (len(y) / n_global)).backward()
        all_reduce_grads(run.model.parameters(), op="sum")
    if run.clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.clip)
    optimizer.step()
    return loss, result, n_global if global_sum else len(y)


class EpochLog:
    """What an epoch accumulates, on the device (no host sync inside the step loop): the loss,
    the first non-finite step, and every sample's latest weights and pseudo-label."""

    def __init__(self, n: int, device) -> None:
        self.alpha = torch.zeros(n, device=device)
        self.beta = torch.zeros(n, device=device)
        self.pseudo = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.got = torch.zeros(n, dtype=torch.bool, device=device)  # weighted this epoch
        self.loss_sum = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.step_sums: list[torch.Tensor] = []  # per step: this rank's sum of alpha + beta
        self.zero_steps = torch.zeros((), device=device)
        self.seen, self.steps, self.weighted = 0, 0, False

    def add(self, step: int, loss, result, idx, n: int, count: int) -> None:
        """A step's loss over ``n`` of this rank's samples, counted as ``count`` samples (the
        global batch size for a global-sum loss: this rank's part of the global step's loss)."""
        self.loss_sum += loss.detach().float() * count
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(loss.detach()), step, self.first_bad)
        self.seen += n
        self.steps += 1
        if result is not None and result.alpha is not None:
            self.alpha[idx], self.beta[idx] = result.alpha.float(), result.beta.float()
            self.got[idx] = True
            if result.pseudo_labels is not None:
                self.pseudo[idx] = result.pseudo_labels
            self.step_sums.append(result.alpha.sum() + result.beta.sum())
            self.weighted = True

    def reduce(self, sync) -> None:
        """Sum over ranks (each rank filled the weights of its own samples)."""
        if self.step_sums:
            sums = torch.stack(self.step_sums).float()
            self.zero_steps = ((sums if sync is None else sync.allsum(sums)) == 0).sum()
        if sync is not None:
            self.alpha, self.beta, self.pseudo = sync.allsum(self.alpha), sync.allsum(self.beta), sync.allmax(self.pseudo)
            self.got = sync.allmax(self.got.to(torch.int64)).bool()
            self.loss_sum = sync.allsum(self.loss_sum)
            self.seen = int(sync.allsum(torch.tensor(float(self.seen), device=self.loss_sum.device)))
            self.first_bad = sync.allmax(self.first_bad)

    def save_weights(self, path: Path, is_noisy: torch.Tensor, prep, history: "WeightHistory") -> None:
        """weights.npz: every training sample's last alpha, beta and pseudo-label, with its noisy
        and true label, and the last epochs' (``history``): what ``l2b label-issues`` and the
        report read. The samples are the noisy training set's (``is_noisy`` long): a clean set
        trained on as well (--train-on-clean) follows them in the stream and is left out."""
        n = len(is_noisy)
        atomic_npz(path, alpha=self.alpha[:n].cpu().numpy(), beta=self.beta[:n].cpu().numpy(),
                   pseudo_labels=self.pseudo[:n].cpu().numpy(), is_noisy=is_noisy.cpu().numpy(),
                   noisy=prep.y_noisy, true=prep.y_true, train_index=prep.train_idx, **history.arrays())

    def mean_loss(self) -> float:
        return self.loss_sum.item() / max(self.seen, 1)

    def weight_summary(self, is_noisy: torch.Tensor) -> dict:
        """Mean per-sample weights on the noisy training set's correct vs corrupted labels (None:
        the method has none); a clean set trained on as well follows those samples and is left out."""
        w, n = self.weighted, len(is_noisy)
        alpha, beta = self.alpha[:n], self.beta[:n]
        return {"alpha_clean": _mean(alpha, ~is_noisy) if w else None,
                "alpha_noisy": _mean(alpha, is_noisy) if w else None,
                "beta_clean": _mean(beta, ~is_noisy) if w else None,
                "beta_noisy": _mean(beta, is_noisy) if w else None,
                "all_zero_step_share": self.zero_steps.item() / max(self.steps, 1) if w else None}


class WeightHistory:
    """Every training sample's weights, pseudo-label and whether it was weighted, over the last
    ``k`` epochs (oldest first): what ``l2b label-issues`` aggregates. It travels in the checkpoint,
    so a resumed run ends with the same arrays. Size: k x n x 11 bytes (alpha and beta float32,
    pseudo-label int16, seen bool): 2.75 MB for 50,000 samples and k = 5."""

    FIELDS = ("alpha", "beta", "pseudo", "seen")

    def __init__(self, k: int, n: int, device) -> None:
        self.k, self.count = k, 0
        self.alpha = torch.zeros(k, n, device=device)
        self.beta = torch.zeros(k, n, device=device)
        self.pseudo = torch.full((k, n), -1, dtype=torch.int16, device=device)
        self.seen = torch.zeros(k, n, dtype=torch.bool, device=device)

    def push(self, log: EpochLog) -> None:
        """Append an epoch's weights (nothing for a method without per-sample weights)."""
        if not log.weighted or self.k == 0:
            return
        for name, new in zip(self.FIELDS, (log.alpha, log.beta, log.pseudo, log.got)):
            rows = getattr(self, name)
            rows[:-1] = rows[1:].clone()
            rows[-1] = new[: rows.shape[1]].to(rows.dtype)  # the noisy training samples, which come first
        self.count = min(self.count + 1, self.k)

    def arrays(self) -> dict[str, np.ndarray]:
        """``alpha_history``, ``beta_history``, ``pseudo_history``, ``seen_history``: (epochs, n)."""
        if self.count == 0:
            return {}
        return {f"{name}_history": getattr(self, name)[self.k - self.count:].cpu().numpy() for name in self.FIELDS}

    def state_dict(self) -> dict:
        return {"count": self.count, **{name: getattr(self, name) for name in self.FIELDS}}

    def load_state_dict(self, state: dict | None) -> None:
        if not state or not int(state["count"]):  # a checkpoint of an earlier version, or nothing kept yet
            return  # (an earlier version sized an unweighted --train-on-clean run's record by its clean set too)
        self.count = int(state["count"])
        for name in self.FIELDS:
            getattr(self, name).copy_(state[name])


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


def diverged(out: Path, epoch: int, step: int | None, main_rank: bool, what: str, detail: str | None = None) -> None:
    """Record in metrics.json where the run diverged and raise ``TrainingDiverged``: ``what``
    became non-finite, or (``detail``) a meta step met NaN/inf, as ``detail`` says."""
    if main_rank:
        atomic_json(out / "metrics.json", {"diverged": {"epoch": epoch, "step": step, "what": what}}, indent=2)
    where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
    kept = (f"{out / 'checkpoint.pt'} keeps epoch {epoch}" if epoch > 0 and (out / "checkpoint.pt").is_file()
            else "no checkpoint was written")
    remedy = "lower --lr, or clip the gradient norm (--clip-grad-norm, e.g. 0.8)"
    if detail is not None:
        raise TrainingDiverged(f"the run diverged at {where}: {detail} ({kept}); {remedy}")
    raise TrainingDiverged(f"{what} became NaN or inf at {where} ({kept}); {remedy}")


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    return float(values[mask].mean()) if mask.any() else None
