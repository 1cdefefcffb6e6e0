"""Convolutional building blocks of H2ASeg, in the order of the authors' code.

MONAI's ``ResidualUnit`` and ``UnetResBlock`` put normalisation and activation after the
convolution; the official H2ASeg blocks are pre-activation (IN → PReLU → Conv) with a
separate PReLU on the skip path, so the weights only load into blocks of exactly this
shape. They are written here for that reason.

Every convolution has a bias and every instance norm is parameter-free (no affine, no
running statistics), as in the official code.

The two encoders (CT, PET) run as one network on channel-stacked features: a block with
``groups=2`` holds both modalities' weights in grouped convolutions and one PReLU slope
per modality, which is the same computation as two separate blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class _InstanceNorm(torch.autograd.Function):
    """Instance norm that keeps the memory format and saves only its output.

    ``F.instance_norm`` turns channels-last input contiguous (so every following
    convolution reorders it back) and saves its input for backward; the channels-last CPU
    group norm keeps the format but loses about 1e-4 to cancellation when the mean is
    large. This uses two-pass statistics (mean, then the mean square of the centred
    input; about 2x faster than ``var_mean``'s Welford pass) and the output-only backward
    ``dx = rstd · (dy − mean(dy) − y · mean(dy · y))``, so the saved tensor is the one the
    following PReLU saves anyway.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, eps: float) -> Tensor:
        dims = (2, 3, 4)
        centred = x - x.mean(dim=dims, keepdim=True)
        rstd = torch.rsqrt(centred.square().mean(dim=dims, keepdim=True) + eps)
        y = centred.mul_(rstd)
        ctx.save_for_backward(y, rstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: Tensor) -> tuple[Tensor, None]:
        y, rstd = ctx.saved_tensors
        dims = (2, 3, 4)
        mean_dy = dy.mean(dim=dims, keepdim=True)
        mean_dy_y = (dy * y).mean(dim=dims, keepdim=True)
        return torch.addcmul(dy - mean_dy, y, mean_dy_y, value=-1.0).mul_(rstd), None


def instance_norm(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Instance norm without affine (``nn.InstanceNorm3d`` defaults) of ``(B, C, X, Y, Z)``,
    keeping channels-last tensors channels-last (see :class:`_InstanceNorm`)."""
    return _InstanceNorm.apply(x, eps)


class GroupPReLU(nn.Module):
    """PReLU with one slope per channel group (one group per modality).

    Features of the two modalities are often stacked on the channel axis as
    ``(B, groups * channels_per_group, X, Y, Z)``; the official code gives each modality
    its own single-parameter ``nn.PReLU``, which this reproduces on the stacked tensor.

    Args:
        channels_per_group: channels of one group.
        groups: number of groups, each with its own slope.
        init: initial slope (PyTorch's default 0.25).
    """

    def __init__(self, channels_per_group: int, groups: int = 2, init: float = 0.25) -> None:
        super().__init__()
        self.channels_per_group = channels_per_group
        self.weight = nn.Parameter(torch.full((groups,), init))

    def slopes(self) -> Tensor:
        """The slope of every channel, ``(groups * channels_per_group,)``, or ``(1,)`` for one group."""
        if self.weight.numel() == 1:
            return self.weight
        return self.weight.repeat_interleave(self.channels_per_group)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the group slopes to ``x`` of shape ``(B, groups * channels_per_group, ...)``."""
        return F.prelu(x, self.slopes())


def prelu_conv(x: Tensor, act: GroupPReLU, conv: nn.Conv3d) -> Tensor:
    """``conv(act(x))`` whose backward recomputes ``act(x)`` instead of storing it.

    A convolution stores its input for the weight gradient, and the PReLU before it stores
    ``x``; recomputing the activation from ``x`` in backward (one elementwise pass) keeps
    one full-size tensor per convolution instead of two. Autograd's own convolution
    backward runs unchanged; only what its saved input is kept as differs
    (``torch.autograd.graph.saved_tensors_hooks``).
    """
    slopes = act.slopes()
    if not torch.is_grad_enabled():
        return conv(F.prelu(x, slopes))
    source, source_slopes, version = x.detach(), slopes.detach(), x._version
    device = x.device.type
    autocast = {"enabled": torch.is_autocast_enabled(device), "dtype": torch.get_autocast_dtype(device)}
    marker = object()
    pending = [F.prelu(x, slopes)]  # emptied after packing: autograd keeps the hooks alive

    def pack(tensor: Tensor) -> object:
        return marker if pending and tensor is pending[0] else tensor

    def unpack(packed: object) -> Tensor:
        if packed is not marker:
            return packed
        if source._version != version:
            raise RuntimeError("the input of a PReLU → Conv pair was modified in place before backward")
        with torch.autocast(device, **autocast):  # recompute under the forward's mixed precision
            return F.prelu(source, source_slopes)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        out = conv(pending[0])
    pending.clear()
    return out


class FirstResBlock(nn.Module):
    """Level-1 encoder block: ``Conv → IN → PReLU → Dropout3d → Conv`` plus a ``Conv`` skip.

    Args:
        in_channels: input channels of all groups (2: CT and PET).
        out_channels: output channels of all groups.
        dropout: ``Dropout3d`` probability between the two convolutions.
        groups: independent branches (2: one per modality).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1, groups=groups)
        self.act = GroupPReLU(out_channels // groups, groups)
        self.drop = nn.Dropout3d(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, groups=groups)
        self.skip = nn.Conv3d(in_channels, out_channels, 3, padding=1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, X, Y, Z)`` → ``(B, out_channels, X, Y, Z)``."""
        hidden = self.drop(self.act(instance_norm(self.conv1(x))))
        return self.conv2(hidden).add_(self.skip(x))  # in place: conv outputs are not saved for backward


class PreActResBlock(nn.Module):
    """Pre-activation residual block (the official ``ResidualConv``).

    Main path ``IN → PReLU → Conv(stride) → Dropout3d → IN → PReLU → Conv``, skip path
    ``IN → PReLU → Conv(stride)``, output the sum. The official code normalises the input
    once per path; instance norm has no parameters, so it is computed once here and each
    path keeps its own PReLU slope.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution of both paths (2 in the encoder, 1 in the
            decoder).
        dropout: ``Dropout3d`` probability after the first convolution.
        groups: independent branches (2 in the dual encoder, 1 in the decoder).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, dropout: float, groups: int = 1
    ) -> None:
        super().__init__()
        self.act_in = GroupPReLU(in_channels // groups, groups)
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups)
        self.drop = nn.Dropout3d(dropout)
        self.act_mid = GroupPReLU(out_channels // groups, groups)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, groups=groups)
        self.act_skip = GroupPReLU(in_channels // groups, groups)
        self.skip = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, X, Y, Z)`` → ``(B, out_channels, ⌈X/s⌉, ⌈Y/s⌉, ⌈Z/s⌉)``."""
        normed = instance_norm(x)
        hidden = self.drop(prelu_conv(normed, self.act_in, self.conv1))
        hidden = prelu_conv(instance_norm(hidden), self.act_mid, self.conv2)
        return hidden.add_(prelu_conv(normed, self.act_skip, self.skip))  # in place: not saved for backward


class SegmentationHead(nn.Module):
    """Deep-supervision head ``IN → PReLU → Conv3x3`` producing logits.

    Args:
        in_channels: feature channels.
        out_channels: logit channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.act = GroupPReLU(in_channels, groups=1)
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, X, Y, Z)`` → logits ``(B, out_channels, X, Y, Z)``."""
        return prelu_conv(instance_norm(x), self.act, self.conv)
