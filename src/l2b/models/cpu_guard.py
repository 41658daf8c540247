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
below 16 has strided 1x1 shortcuts with that few channels (``--channels-last`` makes the weights
channels-last too, and oneDNN takes the faulty kernel when either is). ``guard_strided_1x1(model)``
hands every such convolution a channels-first input and weight on the CPU (copies of the same
values), which oneDNN computes correctly; a model whose convolutions never meet the case is left
untouched.
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


class ChannelsFirstConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` that hands oneDNN a channels-first input and weight on the CPU (copies of
    the same values; gradients flow through the copies). ``--channels-last`` and a one-channel
    batch make either of them channels-last, and oneDNN takes its faulty kernel if either is."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if input.device.type == "cpu":
            # clone, not contiguous(): that keeps a channels-last tensor whose size-1 dimensions make it
            # contiguous as well (a 1x1 kernel, a 1x1 map), and oneDNN reads the strides
            input = input.clone(memory_format=torch.contiguous_format)
            weight = weight.clone(memory_format=torch.contiguous_format)
        return super()._conv_forward(input, weight, bias)


def unguarded(model: nn.Module) -> list[str]:
    """The names of ``model``'s convolutions that can meet the fault and have no guard."""
    return [name for name, m in model.named_modules() if at_risk(m) and not isinstance(m, ChannelsFirstConv2d)]


def guard_strided_1x1(model: nn.Module) -> nn.Module:
    """Make each strided 1x1 ``nn.Conv2d`` of ``model`` with 2-15 input channels a
    ``ChannelsFirstConv2d`` (its class only: the same parameters, names and state dict; on other
    devices nothing changes). A subclass of ``nn.Conv2d`` with its own forward is left as it is
    (``unguarded`` still names it). Returns ``model``; calling it twice changes nothing."""
    for module in model.modules():
        if type(module) is nn.Conv2d and at_risk(module):
            module.__class__ = ChannelsFirstConv2d
    return model


__all__ = ["CHANNEL_BLOCK", "ChannelsFirstConv2d", "at_risk", "guard_strided_1x1", "unguarded"]
