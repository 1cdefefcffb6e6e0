"""SDB (Xue et al., "Multi-Modal Co-Learning for Liver Lesion Segmentation on PET-CT Images",
IEEE TMI 40(12), 2021), reconstructed from the paper (no public code).

A CT and a PET encoding branch whose down-sampling blocks are shared (the same module transforms both
modalities' features, so each block learns from both), modality-specific decoding ("refactoring")
branches that each predict a segmentation, spatially varying fusion maps derived from the features of
every resolution of both branches, and a similarity (consistency) loss between the two branches'
predictions. ``docs/baselines.md`` lists every choice the paper leaves open.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from h2aseg.models._checks import validate_input
from h2aseg.models.fusion_blocks import SegmentationLoss, conv_norm_act, crop_output, pad_input
from h2aseg.models.registry import register_model

N_MODALITIES = 2


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3³ conv–instance-norm–leaky-ReLU layers (one U-Net level)."""
    return nn.Sequential(conv_norm_act(in_channels, out_channels), conv_norm_act(out_channels, out_channels))


class SharedDownsampling(nn.Module):
    """One shared down-sampling block: a stride-2 3³ convolution, instance norm, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, stride=2, padding=1),
            nn.InstanceNorm3d(out_channels, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class SDB(nn.Module):
    """SDB on ``(B, 2, X, Y, Z)`` (channel 0 CT, channel 1 PET); fused logits ``(B, out_channels, X, Y, Z)``.

    Encoders: per level a modality-specific double convolution, then the level's
    :class:`SharedDownsampling` block, applied to the CT and the PET feature alike. Decoders: one U-Net
    decoder per modality on its own skips, each ending in a logit head. Fusion: every decoder level of
    both branches is projected (1³ convolution) to ``features[0]`` channels and up-sampled to full
    resolution; their sum gives, through a 3³ block and a softmax over the two modalities, a fusion map
    per voxel that mixes the two branches' finest features; a 3³ block and a 1³ head give the logits.

    Training: in training mode ``forward`` keeps both branches' logits; :meth:`auxiliary_loss` returns
    ``branch_weight`` × (segmentation loss of each branch) + ``consistency_weight`` × the mean squared
    difference of the two branches' softmax probabilities.

    Args:
        out_channels: logit channels.
        features: widths per level, finest first (``len - 1`` halvings; inputs padded to ``2**(len-1)``).
        branch_weight: weight of each modality branch's segmentation loss.
        consistency_weight: weight of the consistency term.

    Example:
        >>> model = SDB(features=(4, 8, 16)).eval()
        >>> model(torch.randn(1, 2, 10, 9, 7)).shape
        torch.Size([1, 2, 10, 9, 7])
    """

    output_activation = "softmax"

    def __init__(
        self,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        branch_weight: float = 1.0,
        consistency_weight: float = 1.0,
    ) -> None:
        super().__init__()
        features = [int(f) for f in features]
        if len(features) < 2 or min(features) < 1:
            raise ValueError(f"sdb features must be at least 2 positive widths, got {features}")
        if out_channels < 2:
            raise ValueError(f"sdb has a softmax output: out_channels must be >= 2, got {out_channels}")
        if branch_weight < 0 or consistency_weight < 0:
            raise ValueError(f"sdb loss weights must be >= 0, got {branch_weight}, {consistency_weight}")
        self.out_channels = out_channels
        self.branch_weight = branch_weight
        self.consistency_weight = consistency_weight
        levels = len(features)
        self.size_multiple = (2 ** (levels - 1),) * 3
        inputs = [1, *features[:-1]]
        self.encoders = nn.ModuleList(
            nn.ModuleList(double_conv(inputs[k], features[k]) for k in range(levels))
            for _ in range(N_MODALITIES)
        )
        self.shared_down = nn.ModuleList(
            SharedDownsampling(features[k], features[k]) for k in range(levels - 1)
        )
        self.up = nn.ModuleList(
            nn.ModuleList(
                nn.ConvTranspose3d(features[k + 1], features[k], 2, stride=2) for k in range(levels - 1)
            )
            for _ in range(N_MODALITIES)
        )
        self.decoders = nn.ModuleList(
            nn.ModuleList(double_conv(2 * features[k], features[k]) for k in range(levels - 1))
            for _ in range(N_MODALITIES)
        )
        self.branch_heads = nn.ModuleList(
            nn.Conv3d(features[0], out_channels, 1) for _ in range(N_MODALITIES)
        )
        self.projections = nn.ModuleList(nn.Conv3d(N_MODALITIES * f, features[0], 1) for f in features)
        self.fusion_map = nn.Sequential(
            conv_norm_act(features[0], features[0]), nn.Conv3d(features[0], N_MODALITIES, 1)
        )
        self.fused_block = conv_norm_act(features[0], features[0])
        self.head = nn.Conv3d(features[0], out_channels, 1)
        self._kept: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Fused logits ``(B, out_channels, X, Y, Z)``; in training mode also keeps the branch logits."""
        validate_input(x, N_MODALITIES, "sdb")
        logits, branches, _ = self._run(pad_input(x, self.size_multiple))
        spatial = x.shape[2:]
        self._kept = tuple(crop_output(b, spatial) for b in branches) if self.training else None  # type: ignore[assignment]
        return crop_output(logits, spatial)

    def fusion_maps(self, x: Tensor) -> Tensor:
        """The spatially varying fusion maps ``(B, 2, X, Y, Z)`` (CT, PET weights; sum 1 per voxel)."""
        validate_input(x, N_MODALITIES, "sdb")
        return crop_output(self._run(pad_input(x, self.size_multiple))[2], x.shape[2:])

    def auxiliary_loss(self, label: Tensor, segmentation_loss: SegmentationLoss) -> Tensor:
        """Branch supervision and consistency of the last training-mode forward pass (see the class)."""
        if self._kept is None:
            raise RuntimeError("sdb.auxiliary_loss needs a training-mode forward pass first")
        ct, pet = self._kept
        self._kept = None
        supervision = segmentation_loss(ct.float(), label) + segmentation_loss(pet.float(), label)
        consistency = (ct.float().softmax(dim=1) - pet.float().softmax(dim=1)).square().mean()
        return self.branch_weight * supervision + self.consistency_weight * consistency

    def encode(self, x: Tensor) -> list[list[Tensor]]:
        """Encoder features per modality (CT, PET), each level finest first, on the padded grid."""
        streams = []
        for m, blocks in enumerate(self.encoders):
            f = x[:, m : m + 1]
            levels = []
            for k, block in enumerate(blocks):
                f = block(f if k == 0 else self.shared_down[k - 1](levels[-1]))
                levels.append(f)
            streams.append(levels)
        return streams

    def _run(self, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """Fused logits, the two branch logits and the fusion maps on the padded grid."""
        size = x.shape[2:]
        decoded = []
        for m, skips in enumerate(self.encode(x)):
            f = skips[-1]
            levels = [f]
            for k in reversed(range(len(skips) - 1)):
                f = self.decoders[m][k](torch.cat((skips[k], self.up[m][k](f)), dim=1))
                levels.append(f)
            decoded.append(levels[::-1])  # finest first
        context = sum(
            F.interpolate(project(torch.cat(pair, dim=1)), size=size, mode="trilinear")
            if pair[0].shape[2:] != size
            else project(torch.cat(pair, dim=1))
            for project, pair in zip(self.projections, zip(*decoded, strict=True), strict=True)
        )
        maps = self.fusion_map(context).softmax(dim=1)
        finest = [levels[0] for levels in decoded]
        fused = maps[:, :1] * finest[0] + maps[:, 1:] * finest[1]
        branches = [head(f) for head, f in zip(self.branch_heads, finest, strict=True)]
        return self.head(self.fused_block(fused)), branches, maps


@register_model("sdb")
def sdb(**kwargs: object) -> SDB:
    """SDB (Xue et al., IEEE TMI 2021): shared down-sampling blocks, fusion maps, consistency loss."""
    return SDB(**kwargs)  # type: ignore[arg-type]
