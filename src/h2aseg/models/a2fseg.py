"""A2FSeg (Wang et al., "A2FSeg: Adaptive Multi-Modal Fusion Network for Medical Image Segmentation",
MICCAI 2023), for two modalities (CT, PET).

One nnU-Net per modality, deeply supervised; an average-fusion decoder whose input at every scale is the
mean of the modality decoders' features there; an adaptive fusion that weights each modality's finest
decoder feature with attention maps (softmax across modalities) and a final block. Reconstructed from the
paper and the authors' nnU-Net v1 fork (``Zirui0623/A2FSeg``, ``generic_MAML3_channel.py``); every choice
is listed in ``docs/baselines.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetUpBlock
from torch import Tensor, nn

from h2aseg.models._checks import validate_input
from h2aseg.models.baselines import nnunet_kernels_strides
from h2aseg.models.fusion_blocks import (
    ModalityUNet,
    SegmentationLoss,
    conv_norm_act,
    crop_output,
    deep_supervision_loss,
    nnunet_head_weights,
    pad_input,
)
from h2aseg.models.registry import register_model

N_MODALITIES = 2


class A2FSeg(nn.Module):
    """A2FSeg on ``(B, 2, X, Y, Z)`` (channel 0 CT, channel 1 PET); logits ``(B, out_channels, X, Y, Z)``.

    The network plan (kernels, strides, filters) is nnU-Net's for ``patch_size`` at ``spacing_mm``
    (:func:`~h2aseg.models.baselines.nnunet_kernels_strides`), as in the authors' nnU-Net fork. Inputs are
    zero-padded to the product of the strides and cropped back.

    Training: ``forward`` returns the fused logits; in training mode it also keeps the deep-supervision
    heads of the two modality networks and of the average-fusion decoder, which :meth:`auxiliary_loss`
    turns into nnU-Net's weighted deep-supervision loss (weights 1, 1/2, 1/4, ... relative to the fused
    output, the coarsest decoder level without a head).

    Args:
        out_channels: logit channels (2: background, lesion).
        patch_size: training patch ``(X, Y, Z)`` the plan is derived for.
        spacing_mm: voxel spacing ``(X, Y, Z)`` in mm the plan is derived for.
        filters: features per level; ``None``: nnU-Net's ``min(32 * 2**i, 320)``.
        max_poolings: most down-samplings per axis.
        output_bias: give the final 1³ output convolution a bias (none in the design followed, see
            docs/baselines.md; the quality benchmark adds one so that its prior initialisation,
            :mod:`h2aseg.models.output_prior`, applies to every row).

    Example:
        >>> model = A2FSeg(patch_size=(32, 32, 32), spacing_mm=(1, 1, 1), filters=(4, 8, 16, 32)).eval()
        >>> model(torch.randn(1, 2, 20, 17, 9)).shape
        torch.Size([1, 2, 20, 17, 9])
    """

    output_activation = "softmax"

    def __init__(
        self,
        out_channels: int = 2,
        patch_size: Sequence[int] = (128, 128, 64),
        spacing_mm: Sequence[float] = (2.0, 2.0, 3.0),
        filters: Sequence[int] | None = None,
        max_poolings: int = 5,
        output_bias: bool = False,
    ) -> None:
        super().__init__()
        if out_channels < 2:
            raise ValueError(f"a2fseg has a softmax output: out_channels must be >= 2, got {out_channels}")
        kernels, strides = nnunet_kernels_strides(patch_size, spacing_mm, max_poolings=max_poolings)
        n_levels = len(strides)
        if filters is None:
            filters = [min(32 * 2**i, 320) for i in range(n_levels)]
        filters = [int(f) for f in filters]
        if len(filters) < n_levels:
            raise ValueError(f"a2fseg needs {n_levels} filters for patch {tuple(patch_size)}, got {filters}")
        filters = filters[:n_levels]
        self.out_channels = out_channels
        self.size_multiple = tuple(int(m) for m in np.prod(np.asarray(strides), axis=0))
        # nnU-Net v1 supervises every decoder level but the coarsest.
        n_heads = n_levels - 2
        self.modality_nets = nn.ModuleList(
            ModalityUNet(1, out_channels, filters, kernels, strides, n_heads) for _ in range(N_MODALITIES)
        )
        norm = ("instance", {"affine": True})
        self.average_decoder = nn.ModuleList(
            UnetUpBlock(3, filters[k + 1], filters[k], kernels[k], strides[k + 1], strides[k + 1], norm)
            for k in reversed(range(n_levels - 1))
        )
        self.average_heads = nn.ModuleList(UnetOutBlock(3, filters[k], out_channels) for k in range(n_heads))
        base = filters[0]
        self.attention = nn.ModuleList(
            nn.Sequential(
                conv_norm_act(2 * base, base), nn.Conv3d(base, base, 3, padding=1), nn.LeakyReLU(0.01)
            )
            for _ in range(N_MODALITIES)
        )
        self.final_block = conv_norm_act(2 * base, base)
        self.output = nn.Conv3d(base, out_channels, 1, bias=output_bias)
        self.head_weights = nnunet_head_weights(n_heads)
        self._kept: tuple[list[list[Tensor]], tuple[int, ...]] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Fused logits ``(B, out_channels, X, Y, Z)``; in training mode also keeps the branch heads."""
        validate_input(x, N_MODALITIES, "a2fseg")
        padded = pad_input(x, self.size_multiple)
        logits, branch_heads = self._forward_padded(padded)
        self._kept = (branch_heads, tuple(padded.shape[2:])) if self.training else None
        return crop_output(logits, x.shape[2:])

    def fusion_weights(self, x: Tensor) -> Tensor:
        """Adaptive-fusion attention ``(B, 2, F, X', Y', Z')`` (CT, PET) on the padded grid; sums to 1 over
        the modality axis."""
        validate_input(x, N_MODALITIES, "a2fseg")
        return self._fuse(pad_input(x, self.size_multiple))[1]

    def auxiliary_loss(self, label: Tensor, segmentation_loss: SegmentationLoss) -> Tensor:
        """Deep-supervision loss of the CT network, the PET network and the average-fusion decoder for the
        last training-mode forward pass; ``label`` ``(B, 1, X, Y, Z)`` at the input size (zero-padded here
        like the input)."""
        if self._kept is None:
            raise RuntimeError("a2fseg.auxiliary_loss needs a training-mode forward pass first")
        branch_heads, size = self._kept
        self._kept = None
        label = pad_input(label, size) if tuple(label.shape[2:]) != size else label
        weights = self.head_weights
        return sum(deep_supervision_loss(heads, label, segmentation_loss, weights) for heads in branch_heads)

    def _forward_padded(self, x: Tensor) -> tuple[Tensor, list[list[Tensor]]]:
        (fused, _, average, heads) = self._fuse(x)
        logits = self.output(self.final_block(torch.cat((fused, average), dim=1)))
        return logits, heads

    def _fuse(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, list[list[Tensor]]]:
        """Adaptively fused feature, attention maps, average-fusion feature, and every branch's heads."""
        features, heads = zip(
            *(net(x[:, m : m + 1]) for m, net in enumerate(self.modality_nets)), strict=True
        )
        mean = [torch.stack(level).mean(dim=0) for level in zip(*features, strict=True)]
        average = mean[0]
        average_levels = []
        for block, skip in zip(self.average_decoder, mean[1:], strict=True):
            average = block(average, skip)
            average_levels.append(average)
        average_heads = [
            head(f) for head, f in zip(self.average_heads, reversed(average_levels), strict=False)
        ]
        finest = [f[-1] for f in features]
        attention = torch.stack(
            [
                module(torch.cat((f, average), dim=1))
                for module, f in zip(self.attention, finest, strict=True)
            ],
            dim=1,
        ).softmax(dim=1)
        fused = (attention * torch.stack(finest, dim=1)).sum(dim=1)
        return fused, attention, average, [*heads, average_heads]


@register_model("a2fseg")
def a2fseg(**kwargs: object) -> A2FSeg:
    """A2FSeg (Wang et al., MICCAI 2023): per-modality nnU-Nets, average and adaptive fusion."""
    return A2FSeg(**kwargs)  # type: ignore[arg-type]
