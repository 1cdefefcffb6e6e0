"""Blocks shared by the multi-modal baselines (NestedFormer, A2FSeg, SDB).

- :func:`pad_input` / :func:`crop_output`: run a network whose feature maps halve ``n`` times on any
  input size (zero padding at the high end of each axis, as :class:`~h2aseg.models.padcrop.PadCropNetwork`).
- :class:`ModalityUNet`: an nnU-Net-style U-Net on one modality that exposes its decoder features
  and deep-supervision heads (MONAI's ``DynUNet`` blocks, but ``DynUNet`` itself hides the decoder
  features that A2FSeg fuses).
- :func:`deep_supervision_loss`: nnU-Net's weighted sum over heads of decreasing resolution.

Auxiliary-loss hook: a network may define ``auxiliary_loss(label, segmentation_loss) -> Tensor``. After a
training-mode forward pass it returns the extra loss terms of that pass (branch supervision, consistency),
computed from outputs the forward pass kept; :class:`h2aseg.training.module.SegmentationModule` adds it to
the loss of the main output. Calling it clears what was kept, so the graph is not held past the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from torch import Tensor, nn

SegmentationLoss = Callable[[Tensor, Tensor], Tensor]
"""``loss(logits (B, C, X, Y, Z), label (B, 1, X, Y, Z)) -> scalar``, the module's per-output loss."""

Size3 = tuple[int, int, int]


def padded_size(spatial: Sequence[int], multiple: Sequence[int]) -> Size3:
    """The smallest size ``>= spatial`` that is a multiple of ``multiple`` per axis, with at least two voxels
    on the first axis of the coarsest level (instance norm needs more than one value there)."""
    coarsest = [max(math.ceil(s / m), 1) for s, m in zip(spatial, multiple, strict=True)]
    if coarsest == [1, 1, 1]:
        coarsest[0] = 2
    x, y, z = (c * m for c, m in zip(coarsest, multiple, strict=True))
    return x, y, z


def pad_input(x: Tensor, multiple: Sequence[int]) -> Tensor:
    """Zero-pad ``x`` ``(B, C, X, Y, Z)`` at the high end of each axis to :func:`padded_size`."""
    target = padded_size(x.shape[2:], multiple)
    pad = [p for s, t in zip(reversed(x.shape[2:]), reversed(target), strict=True) for p in (0, t - s)]
    return F.pad(x, pad) if any(pad) else x


def crop_output(y: Tensor, spatial: Sequence[int]) -> Tensor:
    """``y[..., :X, :Y, :Z]``: undo :func:`pad_input`."""
    return y[..., : spatial[0], : spatial[1], : spatial[2]]


def nnunet_head_weights(n_heads: int) -> list[float]:
    """nnU-Net's deep-supervision weights relative to the finest head: ``1, 1/2, 1/4, ...``, finest first."""
    return [0.5**i for i in range(n_heads)]


def deep_supervision_loss(
    heads: Sequence[Tensor], label: Tensor, segmentation_loss: SegmentationLoss, weights: Sequence[float]
) -> Tensor:
    """``sum_i weights[i] * segmentation_loss(heads[i], label_i)``, ``label_i`` the label nearest-neighbour
    down-sampled to the size of ``heads[i]`` (nnU-Net's down-sampled targets).

    Args:
        heads: logits ``(B, C, x_i, y_i, z_i)``, finest first.
        label: ``(B, 1, X, Y, Z)`` at the size of the finest head, float or integer classes.
        segmentation_loss: per-output loss.
        weights: one weight per head.
    """
    total = heads[0].new_zeros(())
    for head, weight in zip(heads, weights, strict=True):
        target = label
        if head.shape[2:] != label.shape[2:]:  # nearest has no integer kernel: via float, classes are exact
            target = F.interpolate(label.float(), size=head.shape[2:]).to(label.dtype)
        total = total + weight * segmentation_loss(head.float(), target)
    return total


class ModalityUNet(nn.Module):
    """An nnU-Net-style U-Net (two 3³ conv–instance-norm–leaky-ReLU per level, strided convolution down,
    transposed convolution up) that returns every decoder feature and its deep-supervision logits.

    Args:
        in_channels: input channels.
        out_channels: logit channels of each head.
        filters: features per level, finest first (``len(strides)`` levels, the last one the bottleneck).
        kernels: convolution kernel per level.
        strides: stride per level (the first is usually 1).
        n_heads: deep-supervision heads on the finest ``n_heads`` decoder levels (``0``: no head at all).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        filters: Sequence[int],
        kernels: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_heads: int,
    ) -> None:
        super().__init__()
        if not len(filters) == len(kernels) == len(strides) >= 2:
            raise ValueError(
                f"filters, kernels and strides need one entry per level (>= 2), got {len(filters)}"
            )
        if not 0 <= n_heads < len(filters):
            raise ValueError(f"n_heads must be in [0, {len(filters) - 1}], got {n_heads}")
        norm = ("instance", {"affine": True})
        channels = [in_channels, *filters]
        self.encoder = nn.ModuleList(
            UnetBasicBlock(3, channels[k], channels[k + 1], kernels[k], strides[k], norm)
            for k in range(len(filters))
        )
        self.decoder = nn.ModuleList(
            UnetUpBlock(3, filters[k + 1], filters[k], kernels[k], strides[k + 1], strides[k + 1], norm)
            for k in reversed(range(len(filters) - 1))
        )
        self.heads = nn.ModuleList(UnetOutBlock(3, filters[k], out_channels) for k in range(n_heads))

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Decoder features (bottleneck, then every up-sampled level, coarsest first) and head logits
        (finest first) of ``x`` ``(B, in_channels, X, Y, Z)``."""
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        features = [skips.pop()]
        for block in self.decoder:
            features.append(block(features[-1], skips.pop()))
        heads = [head(f) for head, f in zip(self.heads, reversed(features), strict=False)]
        return features, heads


def conv_norm_act(in_channels: int, out_channels: int, act: nn.Module | None = None) -> nn.Sequential:
    """3³ convolution (with bias), affine instance norm, activation (default leaky ReLU 0.01)."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1),
        nn.InstanceNorm3d(out_channels, affine=True),
        act if act is not None else nn.LeakyReLU(0.01, inplace=True),
    )
