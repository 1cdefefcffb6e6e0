"""Target-aware multi-modal weighting (TAMW) of the H2ASeg decoder.

The official module masks the encoder features with the up-sampled coarse prediction,
weights each channel of the foreground triple ``(ct·p_fg, pet·p_fg, f)`` and of the
background triple ``(ct·p_bg, pet·p_bg, f)`` with a small MLP on their global means, and
returns ``cat(ct, pet, f) + cat(fore) − cat(back)``.

Because every weight is per channel, that sum factorises:
``enc · (1 + w_fg·p_fg − w_bg·p_bg)`` for the encoder channels and
``f · (1 + w_fg − w_bg)`` for the decoder channels. Here the masked maps are never
built: their means come from one batched matrix product, and the output is written once.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from h2aseg.models.registry import OutputActivation


class ChannelWeighting(nn.Module):
    """``Linear(n → n/4) → tanh → Linear(n/4 → n) → tanh`` on per-channel means.

    Args:
        channels: number of pooled channels ``n``.
        reduction: hidden size is ``n // reduction``.
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, pooled: Tensor) -> Tensor:
        """``(B, n)`` channel means → ``(B, n)`` weights in ``(-1, 1)``."""
        return torch.tanh(self.fc2(torch.tanh(self.fc1(pooled))))


TAMWMask = Literal["encoder", "all"]


class TAMW(nn.Module):
    """Target-aware multi-modal weighting (H2ASeg, Lu et al., MICCAI 2024).

    The official code pools with a fixed ``AvgPool3d(patch_size / 2^k)``, which only runs
    at the training size; the global mean used here is the same number there and works
    at every size.

    Args:
        encoder_channels: channels ``C`` of one modality's encoder feature.
        decoder_channels: channels ``F`` of the up-sampled decoder feature.
        output_activation: how the coarse logits become probabilities: ``"softmax"``
            (foreground = all classes but 0, background = class 0) or ``"sigmoid"`` (one
            channel; foreground = σ(p), background = 1 − σ(p)).
        mask: which features the probabilities mask: ``"encoder"`` (official code: CT and
            PET; the decoder feature enters both triples unmasked) or ``"all"`` (paper,
            Eq. 2: the whole concatenation).

    Example:
        >>> tamw = TAMW(8, 32)
        >>> encoder, f = torch.randn(1, 16, 16, 16, 8), torch.randn(1, 32, 16, 16, 8)
        >>> tamw(encoder, f, torch.randn(1, 2, 8, 8, 4)).shape
        torch.Size([1, 48, 16, 16, 8])
    """

    def __init__(
        self,
        encoder_channels: int,
        decoder_channels: int,
        output_activation: OutputActivation = "softmax",
        mask: TAMWMask = "encoder",
    ) -> None:
        super().__init__()
        if mask not in ("encoder", "all"):
            raise ValueError(f"TAMW mask must be 'encoder' or 'all', got {mask!r}")
        self.encoder_channels = encoder_channels
        self.output_activation = output_activation
        self.mask = mask
        pooled = 2 * encoder_channels + decoder_channels
        self.fore = ChannelWeighting(pooled)
        self.back = ChannelWeighting(pooled)

    def _probabilities(self, logits: Tensor, size: torch.Size) -> Tensor:
        """Coarse logits → ``(B, 2, N)`` background and foreground probability at ``size``."""
        logits = F.interpolate(logits, size=size, mode="trilinear", align_corners=True)
        if self.output_activation == "sigmoid":
            foreground = torch.sigmoid(logits)
            return torch.cat((1.0 - foreground, foreground), dim=1).flatten(2)
        probs = torch.softmax(logits, dim=1)
        if probs.shape[1] > 2:
            probs = torch.cat((probs[:, :1], probs[:, 1:].sum(1, keepdim=True)), dim=1)
        return probs.flatten(2)

    def forward(self, encoder: Tensor, f: Tensor, coarse_logits: Tensor) -> Tensor:
        """Weight the skip features by the coarser prediction and concatenate.

        Args:
            encoder: CT and PET encoder features stacked, ``(B, 2C, X, Y, Z)``, CT first.
            f: up-sampled decoder feature ``(B, F, X, Y, Z)``.
            coarse_logits: logits of the coarser head ``(B, K, X/2, Y/2, Z/2)``.

        Returns:
            ``(B, 2C + F, X, Y, Z)``: ``cat(ct, pet, f) + cat(fore) − cat(back)``.
        """
        masked = encoder if self.mask == "encoder" else torch.cat((encoder, f), dim=1)
        b, n_masked = masked.shape[:2]
        probs = self._probabilities(coarse_logits, encoder.shape[2:])  # (B, 2, N): background, foreground
        # Channel means of x·p_bg and x·p_fg without building the masked maps.
        means = torch.bmm(masked.flatten(2), probs.transpose(1, 2)) / probs.shape[-1]  # (B, n_masked, 2)
        back_means, fore_means = means[..., 0], means[..., 1]
        if self.mask == "encoder":
            f_means = f.mean(dim=(2, 3, 4))
            back_means, fore_means = (
                torch.cat((back_means, f_means), 1),
                torch.cat((fore_means, f_means), 1),
            )
        w_fore, w_back = self.fore(fore_means), self.back(back_means)
        # x · (1 − w_bg·p_bg + w_fg·p_fg): a rank-2 product, built voxel-major (channels last).
        coefficients = torch.stack((-w_back[:, :n_masked], w_fore[:, :n_masked]), dim=1)  # (B, 2, n_masked)
        ones = torch.ones(1, 1, 1, dtype=probs.dtype, device=probs.device)
        factor = torch.baddbmm(ones, probs.transpose(1, 2), coefficients)  # (B, N, n_masked)
        weighted = masked * factor.view(b, *masked.shape[2:], n_masked).permute(0, 4, 1, 2, 3)
        if self.mask == "all":
            return weighted
        f_scale = (1.0 + w_fore[:, n_masked:] - w_back[:, n_masked:])[:, :, None, None, None]
        return torch.cat((weighted, f * f_scale), dim=1)
