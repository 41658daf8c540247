"""A guard against a oneDNN fault in strided 1x1 convolutions on the CPU.

oneDNN's x86 1x1 convolution computes the weight gradient of a strided convolution over a
channels-last input through a workspace sized for a full block of input channels (8 with AVX2,
16 with AVX-512). With fewer input channels than that it writes past the workspace: measured
with torch 2.13's CPU build on an AVX2 machine, 2 to 7 input channels abort the process with
glibc heap corruption ("double free or corruption", "corrupted size vs. prev_size"); on other
CPUs the same case is reported to hang or to return a wrong gradient without any error
(https://github.com/uxlfoundation/oneDNN/issues/6035). A forward pass, the input gradient, a
channels-first input and a stride of 1 are not affected.

The case is not rare here: a one-channel image batch (8x8 digits) is both channels-first and
channels-last, convolutions then keep the channels-last layout, and PreActResNet-18 at width
below 16 has strided 1x1 shortcuts with that few channels. ``guard_strided_1x1(model)`` hands
every such convolution a channels-first input on the CPU (a copy of the same values), which
oneDNN computes correctly; a model whose convolutions never meet the case is left untouched.
"""

from __future__ import annotations

import torch
from torch import nn

# the widest channel block of oneDNN's x86 1x1 kernels (AVX-512); AVX2's is 8
CHANNEL_BLOCK = 16


def at_risk(conv: nn.Module) -> bool:
    """Whether oneDNN's weight gradient of ``conv`` can fault on a channels-last CPU input."""
    return (isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) != (1, 1)
            and 1 < conv.in_channels < CHANNEL_BLOCK)


def _channels_first(conv: nn.Module, args: tuple):
    x = args[0]
    if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous():
        return (x.contiguous(), *args[1:])
    return None


def unguarded(model: nn.Module) -> list[str]:
    """The names of ``model``'s convolutions that can meet the fault and have no guard."""
    return [name for name, m in model.named_modules() if at_risk(m) and not getattr(m, "_l2b_channels_first", False)]


def guard_strided_1x1(model: nn.Module) -> nn.Module:
    """Give each strided 1x1 convolution of ``model`` with 2-15 input channels a channels-first
    input on the CPU (a forward pre-hook; the values, and on other devices everything, are
    unchanged). Returns ``model``; calling it twice adds nothing."""
    for module in model.modules():
        if at_risk(module) and not getattr(module, "_l2b_channels_first", False):
            module.register_forward_pre_hook(_channels_first)
            module._l2b_channels_first = True
    return model


__all__ = ["CHANNEL_BLOCK", "at_risk", "guard_strided_1x1", "unguarded"]
