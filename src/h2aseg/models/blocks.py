"""Convolutional building blocks of H2ASeg, in the order of the authors' code.

MONAI's ``ResidualUnit`` and ``UnetResBlock`` put normalisation and activation after the
convolution; the official H2ASeg blocks are pre-activation (IN → PReLU → Conv) with a
separate PReLU on the skip path, so the weights only load into blocks of exactly this
shape. They are written here for that reason.

Every convolution has a bias and every ``InstanceNorm3d`` is parameter-free (no affine,
no running statistics), as in the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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

    def forward(self, x: Tensor) -> Tensor:
        """Apply the group slopes to ``x`` of shape ``(B, groups * channels_per_group, ...)``."""
        return F.prelu(x, self.weight.repeat_interleave(self.channels_per_group))


class FirstResBlock(nn.Module):
    """Level-1 encoder block: ``Conv → IN → PReLU → Dropout3d → Conv`` plus a ``Conv`` skip.

    Args:
        in_channels: input channels (1: one modality).
        out_channels: output channels.
        dropout: ``Dropout3d`` probability between the two convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.act = nn.PReLU()
        self.drop = nn.Dropout3d(dropout)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, X, Y, Z)`` → ``(B, out_channels, X, Y, Z)``."""
        hidden = self.drop(self.act(F.instance_norm(self.conv1(x))))
        return self.conv2(hidden) + self.skip(x)


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
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.act_in = nn.PReLU()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.drop = nn.Dropout3d(dropout)
        self.act_mid = nn.PReLU()
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.act_skip = nn.PReLU()
        self.skip = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, X, Y, Z)`` → ``(B, out_channels, ⌈X/s⌉, ⌈Y/s⌉, ⌈Z/s⌉)``."""
        normed = F.instance_norm(x)
        hidden = self.drop(self.conv1(self.act_in(normed)))
        hidden = self.conv2(self.act_mid(F.instance_norm(hidden)))
        return hidden + self.skip(self.act_skip(normed))


class SegmentationHead(nn.Module):
    """Deep-supervision head ``IN → PReLU → Conv3x3`` producing logits.

    Args:
        in_channels: feature channels.
        out_channels: logit channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.act = nn.PReLU()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in_channels, X, Y, Z)`` → logits ``(B, out_channels, X, Y, Z)``."""
        return self.conv(self.act(F.instance_norm(x)))
