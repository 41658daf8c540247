"""Normalisations and constraints that turn raw meta-gradients into L2B weights.

Every normaliser is a small pure function on a tensor: it normalises over the LAST dimension and
returns a tensor of the same shape. The authors' code flattens the raw weights of a batch to the
2n entries ``[alpha_1..alpha_n, beta_1..beta_n]`` and normalises them jointly (yuyinzhou/L2B main.py, ``weight.view(2, -1)``), so that
the weighted SUM of the 2n losses is the training loss.

References:
    Zhou et al., "L2B: Learning to Bootstrap for Combating Label Noise", Eq. 9, 13, 14.
    Ren et al., "Learning to Reweight Examples for Robust Deep Learning", ICML 2018, Eq. (9).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "NORMALIZERS",
    "CONSTRAINTS",
    "sum_normalize",
    "softmax_normalize",
    "sigmoid_normalize",
    "hard_normalize",
    "normalize_weights",
]

# Added to the denominator of the sum normalisation, as in L2RW and the authors' code: when every
# weight clamps to zero the result is all zeros instead of NaN.
SUM_EPS = 1e-10


def _local(t: torch.Tensor) -> torch.Tensor:
    return t


# Each normaliser reduces over the last dimension through ``allsum`` / ``allmax``: the identity for
# one process, an all-reduce across ranks under data parallelism (``l2b.distributed``), so that a
# batch split over W processes is normalised exactly as the whole batch would be in one.


def sum_normalize(w: torch.Tensor, *, allsum=_local, **_: object) -> torch.Tensor:
    """Clamp at zero and divide by the total (paper Eq. 9, L2RW Eq. 9).

    If every entry clamps to zero the result is all zeros: the step's loss is then zero.
    """
    w = w.clamp(min=0)
    return w / (allsum(w.sum(dim=-1, keepdim=True)) + SUM_EPS)


def softmax_normalize(w: torch.Tensor, *, temperature: float = 1.0, allsum=_local, allmax=_local,
                      **_: object) -> torch.Tensor:
    """``softmax(w / T)`` without clamping (paper Eq. 14; the ISIC runs use T = 10)."""
    z = w / temperature
    e = torch.exp(z - allmax(z.amax(dim=-1, keepdim=True)))
    return e / allsum(e.sum(dim=-1, keepdim=True))


def sigmoid_normalize(w: torch.Tensor, *, allsum=_local, **_: object) -> torch.Tensor:
    """``sigmoid(w) / sum(sigmoid(w))`` without clamping (paper Eq. 13, then summed to one).

    A raw weight of exactly zero gets sigmoid(0) = 0.5 before the division.
    """
    s = torch.sigmoid(w)
    return s / allsum(s.sum(dim=-1, keepdim=True))


def isic_normalize(w: torch.Tensor, *, allsum=_local, **_: object) -> torch.Tensor:
    """The authors' ISIC branch of L2RW (yuyinzhou/L2B main.py, ``dataset == 'ISIC'``): clamp at
    zero, sigmoid, divide by the total. A clamped weight becomes sigmoid(0) = 0.5 before the
    division, so no sample gets zero weight."""
    s = torch.sigmoid(w.clamp(min=0))
    return s / (allsum(s.sum(dim=-1, keepdim=True)) + SUM_EPS)


def hard_normalize(w: torch.Tensor, *, temperature: float = 1.0, threshold: float | None = None,
                   allsum=_local, allmax=_local, **_: object) -> torch.Tensor:
    """Softmax, then entries at or below ``threshold`` set to zero, without renormalising.

    ``threshold=None`` means ``1/k`` for k entries: only weights above the uniform share survive.
    """
    p = softmax_normalize(w, temperature=temperature, allsum=allsum, allmax=allmax)
    if threshold is None:
        k = allsum(torch.full(p.shape[:-1] + (1,), float(w.shape[-1]), dtype=p.dtype, device=p.device))
        threshold = 1.0 / k
    return torch.where(p > threshold, p, torch.zeros_like(p))


NORMALIZERS: dict[str, Callable[..., torch.Tensor]] = {
    "sum": sum_normalize,
    "softmax": softmax_normalize,
    "sigmoid": sigmoid_normalize,
    "hard": hard_normalize,
    "isic": isic_normalize,
}

# None: alpha, beta >= 0 jointly normalised (L2B). "beta=0": L2RW (Ren et al. 2018).
# "alpha=0" and "alpha+beta=1": the ablations of the paper's Table 7.
CONSTRAINTS = (None, "alpha=0", "beta=0", "alpha+beta=1")


def check_options(normalize: str, constraint: str | None, temperature: float) -> None:
    """Raise a ValueError naming the bad option and the valid choices."""
    if normalize not in NORMALIZERS:
        raise ValueError(
            f"unknown normalize={normalize!r}; choose one of {', '.join(map(repr, NORMALIZERS))}"
        )
    if constraint not in CONSTRAINTS:
        raise ValueError(
            f"unknown constraint={constraint!r}; choose one of {', '.join(map(repr, CONSTRAINTS))}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def normalize_weights(
    raw_alpha: torch.Tensor,
    raw_beta: torch.Tensor,
    *,
    normalize: str = "sum",
    constraint: str | None = None,
    temperature: float = 1.0,
    threshold: float | None = None,
    allsum=_local,
    allmax=_local,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map raw meta-gradients (shape (n,)) to the weights alpha, beta of the real step.

    Args:
        raw_alpha, raw_beta: ``-dG/d eps`` for the observed-label and pseudo-label terms.
        normalize: ``"sum"`` (Eq. 9), ``"softmax"`` (Eq. 14), ``"sigmoid"`` (Eq. 13), ``"hard"``.
        constraint: ``None`` normalises all 2n entries jointly; ``"beta=0"`` (L2RW) and
            ``"alpha=0"`` normalise the remaining n entries and set the other half to zero;
            ``"alpha+beta=1"`` normalises each sample's pair (alpha_i, beta_i) on its own, so the
            sample keeps its uniform share and only the split between the two labels is learned
            (paper Eq. 2 with a learned per-sample beta). Its weights are scaled by 1/n so that,
            like every other setting, they sum to one over the batch: alpha_i + beta_i = 1/n.
            A pair whose entries both clamp to zero under ``"sum"`` is split evenly.
        temperature, threshold: for ``"softmax"`` and ``"hard"``.
        allsum, allmax: how a per-process partial sum / max becomes the batch's (identity in one
            process; an all-reduce when the batch is split over ranks).

    Returns:
        ``(alpha, beta)``, each of shape (n,).
    """
    check_options(normalize, constraint, temperature)
    norm = NORMALIZERS[normalize]
    kw = dict(temperature=temperature, threshold=threshold, allsum=allsum, allmax=allmax)
    if constraint is None:
        n = raw_alpha.shape[0]
        w = norm(torch.cat([raw_alpha, raw_beta]), **kw)
        return w[:n], w[n:]
    if constraint == "beta=0":
        return norm(raw_alpha, **kw), torch.zeros_like(raw_alpha)
    if constraint == "alpha=0":
        return torch.zeros_like(raw_beta), norm(raw_beta, **kw)
    # "alpha+beta=1": a per-sample convex combination of the two losses (a local normalisation
    # of each pair), scaled by 1/n for the whole batch's n.
    pair = norm(torch.stack([raw_alpha, raw_beta], dim=-1), temperature=temperature, threshold=threshold)
    total = pair.sum(dim=-1, keepdim=True)
    even = torch.full_like(pair, 0.5)
    share = torch.where(total > 0, pair / total.clamp(min=torch.finfo(pair.dtype).tiny), even)
    n = allsum(torch.tensor([float(raw_alpha.shape[0])], dtype=pair.dtype, device=pair.device))
    share = share / n
    return share[:, 0], share[:, 1]
