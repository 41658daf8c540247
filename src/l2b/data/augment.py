"""Batched augmentation of in-memory images on whatever device they live on (no per-image Python)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_batch(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 N×C×H×W -> float, scaled to [0, 1] then standardised per channel."""
    x = x_uint8.to(dtype) / 255.0
    return (x - mean.to(x)[:, None, None]) / std.to(x)[:, None, None]


def augment_batch(x: torch.Tensor, *, crop_padding: int = 0, flip: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, one draw per image.

    Works on any dtype; apply it to the uint8 batch before ``normalize_batch`` so that the padding
    is black, as with torchvision's ``RandomCrop(padding=p)``. ``generator`` must live on ``x``'s
    device; the result is a pure function of its state.
    """
    n, _, h, w = x.shape
    dev = x.device
    if crop_padding:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
