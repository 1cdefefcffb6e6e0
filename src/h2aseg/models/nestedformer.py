"""NestedFormer (Xing et al., "NestedFormer: Nested Modality-Aware Transformer for Brain Tumor
Segmentation", MICCAI 2022), for two modalities (CT, PET) and any input size.

One PoolFormer-style encoder per modality (global token mixing), the Nested Modality-aware Feature
Aggregation (NMaFA) at the bottleneck (tri-oriented spatial attention on the stacked modalities, then
cross-modality attention from every voxel to learned tokens of each modality), modality-sensitive gating
(MSG) on the skip connections and a convolutional decoder. Reconstructed from the paper and the authors'
code (``920232796/NestedFormer``, Apache-2.0); ``docs/baselines.md`` lists every deviation. The authors'
code fixes the input size at construction (``Linear(1, D·H·W)`` token mixers, learned position
embeddings): here those size-bound parameters live on the grid of ``reference_size`` and are resampled
(trilinear, ``align_corners=True``) to the actual size, which leaves the network unchanged at the
reference size and lets it run on any size (sliding windows, odd volumes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from h2aseg.models._checks import validate_input
from h2aseg.models.fusion_blocks import crop_output, pad_input
from h2aseg.models.registry import register_model

N_MODALITIES = 2
N_DOWN = 4


def _resample(table: Tensor, size: Sequence[int]) -> Tensor:
    """A learned ``(1, C, *grid)`` table resampled to ``size`` (1-, 2- or 3-D), identity at its own grid."""
    if tuple(table.shape[2:]) == tuple(size):
        return table
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(table, size=tuple(size), mode=mode, align_corners=True)


class ChannelLayerNorm(nn.LayerNorm):
    """Layer norm over the channels of each voxel of ``(B, C, X, Y, Z)`` (PoolFormer's)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def two_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3³ convolutions, each with instance norm (not affine) and ReLU (the authors' ``TwoConv``)."""
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        layers += [nn.Conv3d(c_in, out_channels, 3, padding=1), nn.InstanceNorm3d(out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


class GlobalPoolMixer(nn.Module):
    """The encoder's token mixer: the spatial mean of each channel spread over the grid with a learned
    per-voxel gain and bias (the authors' ``Linear(1, D·H·W)``), kept at ``grid`` and resampled."""

    def __init__(self, grid: Sequence[int]) -> None:
        super().__init__()
        # nn.Linear(1, n)'s initialisation: U(-1, 1) for weight and bias.
        self.gain = nn.Parameter(torch.empty(1, 1, *grid).uniform_(-1.0, 1.0))
        self.bias = nn.Parameter(torch.empty(1, 1, *grid).uniform_(-1.0, 1.0))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        mean = x.mean(dim=(2, 3, 4), keepdim=True)
        return mean * _resample(self.gain, size) + _resample(self.bias, size)


class PoolFormerBlock(nn.Module):
    """Global-pool token mixing and a 1³-convolution MLP, each with a residual, as the authors' code:
    ``x + n + mix(n)`` with ``n = norm(x)``, then ``x + mlp(norm(x))``."""

    def __init__(self, channels: int, grid: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.norm_mix = ChannelLayerNorm(channels, eps=1e-6)
        self.mix = GlobalPoolMixer(grid)
        self.norm_mlp = ChannelLayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Conv3d(channels, 2 * channels, 1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Conv3d(2 * channels, channels, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm_mix(x)
        x = x + n + self.mix(n)
        return x + self.mlp(self.norm_mlp(x))


class ModalityEncoder(nn.Module):
    """One modality's encoder: two 3³ convolutions, then four stages of a stride-2 patch embedding and two
    :class:`PoolFormerBlock`; returns the five levels, finest first."""

    def __init__(self, features: Sequence[int], grids: Sequence[Sequence[int]], dropout: float) -> None:
        super().__init__()
        self.stem = two_conv(1, features[0])
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(features[k], features[k + 1], 2, stride=2),
                ChannelLayerNorm(features[k + 1]),
                PoolFormerBlock(features[k + 1], grids[k], dropout),
                PoolFormerBlock(features[k + 1], grids[k], dropout),
            )
            for k in range(N_DOWN)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        levels = [self.stem(x)]
        for stage in self.stages:
            levels.append(stage(levels[-1]))
        return levels


class MultiHeadAttention(nn.Module):
    """Multi-head attention of ``q`` ``(..., N, C)`` on ``kv`` ``(..., M, C)`` (default ``q``) through
    ``scaled_dot_product_attention``; ``bias`` is added to the logits, broadcast to ``(..., heads, N, M)``."""

    def __init__(self, channels: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention width {channels} is not divisible by {heads} heads")
        self.heads = heads
        self.query = nn.Linear(channels, channels, bias=qkv_bias)
        self.key_value = nn.Linear(channels, 2 * channels, bias=qkv_bias)
        self.out = nn.Linear(channels, channels)

    def forward(self, q: Tensor, kv: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        kv = q if kv is None else kv
        *lead, n, c = q.shape
        query = self.query(q).unflatten(-1, (self.heads, -1)).transpose(-3, -2)
        key, value = self.key_value(kv).unflatten(-1, (2, self.heads, -1)).movedim(-3, 0).transpose(-3, -2)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        return self.out(out.transpose(-3, -2).reshape(*lead, n, c))


class WindowAttention(nn.Module):
    """Self-attention inside non-overlapping 3-D windows with a relative position bias shared by the heads
    (the authors' ``WindowAttention``). A window is clipped to the feature size; a feature size that is
    not a multiple of the window is zero-padded and the padded keys are masked."""

    def __init__(self, channels: int, heads: int, window: Sequence[int]) -> None:
        super().__init__()
        self.window = tuple(int(w) for w in window)
        self.attention = MultiHeadAttention(channels, heads, qkv_bias=False)
        self.relative_bias = nn.Parameter(torch.randn(*(2 * w - 1 for w in self.window)))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, X, Y, Z, C)`` channels last → same shape."""
        b, *size, c = x.shape
        window = [min(w, s) for w, s in zip(self.window, size, strict=True)]
        padded = [-(-s // w) * w for s, w in zip(size, window, strict=True)]
        pad = [0, 0] + [p for s, t in zip(reversed(size), reversed(padded), strict=True) for p in (0, t - s)]
        x = F.pad(x, pad)
        counts = [p // w for p, w in zip(padded, window, strict=True)]
        # (B, nx, wx, ny, wy, nz, wz, C) -> (B, nx·ny·nz, wx·wy·wz, C)
        tokens = x.reshape(b, counts[0], window[0], counts[1], window[1], counts[2], window[2], c)
        tokens = tokens.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, window[0] * window[1] * window[2], c)
        bias = self._bias(window, size, padded, counts, x.device).to(x.dtype)
        out = self.attention(tokens, bias=bias)
        out = out.reshape(b, counts[0], counts[1], counts[2], window[0], window[1], window[2], c)
        out = out.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, *padded, c)
        return out[:, : size[0], : size[1], : size[2]]

    def _bias(
        self, window: list[int], size: list[int], padded: list[int], counts: list[int], device: torch.device
    ) -> Tensor:
        """Attention bias ``(windows, 1, n, n)``: relative position bias, ``-inf`` on padded keys."""
        grids = torch.meshgrid(*(torch.arange(w, device=device) for w in window), indexing="ij")
        position = torch.stack([g.flatten() for g in grids])  # (3, n)
        offset = position[:, :, None] - position[:, None, :]
        centre = [w - 1 for w in self.window]
        bias = self.relative_bias[offset[0] + centre[0], offset[1] + centre[1], offset[2] + centre[2]]
        bias = bias.expand(counts[0] * counts[1] * counts[2], 1, -1, -1)
        if padded == size:
            return bias
        valid = torch.zeros(padded, dtype=torch.bool, device=device)
        valid[: size[0], : size[1], : size[2]] = True
        valid = valid.reshape(counts[0], window[0], counts[1], window[1], counts[2], window[2])
        valid = valid.permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, 1, bias.shape[-1])
        return bias.masked_fill(~valid, float("-inf"))


class TriOrientedBlock(nn.Module):
    """The NMaFA spatial transformer block: pre-norm; the sum of attention within each plane of the first
    axis, attention along the first axis, and 3-D window attention; residual; pre-norm MLP; residual.
    With ``reference`` the first block adds learned plane and axis position embeddings (resampled)."""

    def __init__(
        self,
        channels: int,
        heads: int,
        window: Sequence[int],
        reference: Sequence[int] | None,
        dropout: float,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.plane = MultiHeadAttention(channels, heads)
        self.axis = MultiHeadAttention(channels, heads)
        self.window = WindowAttention(channels, heads, window)
        self.mlp_norm = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = _mlp(channels, dropout)
        self.plane_position = self.axis_position = None
        if reference is not None:
            self.plane_position = nn.Parameter(torch.zeros(1, channels, reference[1], reference[2]))
            self.axis_position = nn.Parameter(torch.zeros(1, channels, reference[0]))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, X, Y, Z, C)`` channels last → same shape."""
        b, sx, sy, sz, c = x.shape
        n = self.norm(x)
        plane, axis = n, n
        if self.plane_position is not None:
            plane = plane + _resample(self.plane_position, (sy, sz)).permute(0, 2, 3, 1)[:, None]
            axis = axis + _resample(self.axis_position, (sx,)).permute(0, 2, 1)[:, :, None, None]
        plane = self.plane(plane.reshape(b, sx, sy * sz, c)).reshape(x.shape)
        axis = self.axis(axis.permute(0, 2, 3, 1, 4).reshape(b, sy * sz, sx, c))
        axis = axis.reshape(b, sy, sz, sx, c).permute(0, 3, 1, 2, 4)
        x = x + plane + axis + self.window(n)
        return x + self.mlp(self.mlp_norm(x))


class CrossModalityAttention(nn.Module):
    """Cross-modality attention: each modality's bottleneck feature becomes ``tokens`` learned tokens
    (TokenLearner: sigmoid spatial maps, weighted spatial mean); every voxel of ``q`` attends to the tokens
    of all modalities; post-norm residual attention and MLP (the authors' ``CrossAttBlock``)."""

    def __init__(
        self, channels: int, heads: int, tokens: int, reference: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Conv3d(channels, channels, 1) for _ in range(N_MODALITIES))
        self.positions = nn.ParameterList(
            nn.Parameter(torch.zeros(1, channels, *reference)) for _ in range(N_MODALITIES)
        )
        self.dropout = nn.Dropout(dropout)
        self.token_maps = nn.Conv3d(channels, tokens, 3, padding=1)
        self.attention = MultiHeadAttention(channels, heads)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = _mlp(channels, dropout)
        self.mlp_norm = nn.LayerNorm(channels, eps=1e-6)

    def modality_tokens(self, features: Sequence[Tensor]) -> Tensor:
        """Learned tokens ``(B, 2·tokens, C)`` of the modalities' features ``(B, C, X, Y, Z)`` (CT first)."""
        tokens = []
        for embed, position, f in zip(self.embeddings, self.positions, features, strict=True):
            e = self.dropout(embed(f) + _resample(position, f.shape[2:]))
            maps = torch.sigmoid(self.token_maps(e)).flatten(2)  # (B, S, N)
            tokens.append(maps @ e.flatten(2).transpose(1, 2) / maps.shape[-1])
        return torch.cat(tokens, dim=1)

    def forward(self, q: Tensor, features: Sequence[Tensor]) -> Tensor:
        """``q`` ``(B, X, Y, Z, C)`` channels last; returns the same shape."""
        shape = q.shape
        q = q.reshape(shape[0], -1, shape[-1])
        x = self.norm(q + self.attention(q, self.modality_tokens(features)))
        return self.mlp_norm(x + self.mlp(x)).reshape(shape)


def _mlp(channels: int, dropout: float) -> nn.Sequential:
    """Transformer MLP ``C → 2C → C`` with GELU (the authors' ``mlp_size = 2 · fea[4]``)."""
    return nn.Sequential(
        nn.Linear(channels, 2 * channels),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(2 * channels, channels),
        nn.Dropout(dropout),
    )


class ModalityGate(nn.Module):
    """Modality-sensitive gating of one skip level: a sigmoid gate per modality and voxel from the
    concatenated modality features (1³ convolution), the gated features concatenated and fused by two
    3³ convolutions. ``gated=False`` is the authors' released code (no gate, only the convolutions)."""

    def __init__(self, channels: int, gated: bool) -> None:
        super().__init__()
        self.gate = nn.Conv3d(N_MODALITIES * channels, N_MODALITIES, 1) if gated else None
        self.fuse = two_conv(N_MODALITIES * channels, channels)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        stacked = torch.cat(tuple(features), dim=1)
        if self.gate is not None:
            gates = torch.sigmoid(self.gate(stacked))
            stacked = torch.cat([g[:, None] * f for g, f in zip(gates.unbind(1), features, strict=True)], 1)
        return self.fuse(stacked)


class UpConcat(nn.Module):
    """Transposed 2³ convolution to half the channels, concatenation after the skip, two 3³ convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, in_channels // 2, 2, stride=2)
        self.convs = two_conv(skip_channels + in_channels // 2, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.convs(torch.cat((skip, self.up(x)), dim=1))


class NestedFormer(nn.Module):
    """NestedFormer on ``(B, 2, X, Y, Z)`` (channel 0 CT, channel 1 PET) → logits ``(B, C, X, Y, Z)``.

    Inputs are zero-padded to multiples of 16 (four halvings) and cropped back; any size runs.

    Args:
        out_channels: logit channels.
        features: six widths (the authors' ``fea``): encoder levels 1–5 (level 5 is the NMaFA width) and
            the last decoder level.
        reference_size: the patch ``(X, Y, Z)`` on whose grids the size-bound parameters (token-mixer
            gains, position embeddings) are kept; at this size the network is the authors' exactly.
        window_size: NMaFA window-attention window at the bottleneck (the authors' training uses 4³).
        spatial_layers: tri-oriented spatial-attention blocks in NMaFA.
        tokens: learned tokens per modality in the cross-modality attention.
        heads: attention heads (divides ``features[4]``).
        dropout: dropout in the MLPs and the token embeddings (the authors' 0.1).
        gated_skips: modality-sensitive gating of the skips (paper); ``False`` as the released code.

    Example:
        >>> model = NestedFormer(features=(4, 4, 8, 8, 16, 4), reference_size=(32, 32, 32), heads=2).eval()
        >>> model(torch.randn(1, 2, 20, 17, 9)).shape
        torch.Size([1, 2, 20, 17, 9])
    """

    output_activation = "softmax"
    size_multiple = (2**N_DOWN,) * 3

    def __init__(
        self,
        out_channels: int = 2,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        reference_size: Sequence[int] = (128, 128, 64),
        window_size: Sequence[int] = (4, 4, 4),
        spatial_layers: int = 2,
        tokens: int = 32,
        heads: int = 8,
        dropout: float = 0.1,
        gated_skips: bool = True,
    ) -> None:
        super().__init__()
        features = [int(f) for f in features]
        if len(features) != 6 or min(features) < 1:
            raise ValueError(f"nestedformer features must be 6 positive widths, got {features}")
        if len(reference_size) != 3 or any(int(s) % self.size_multiple[0] for s in reference_size):
            raise ValueError(f"nestedformer reference_size must be 3 multiples of 16, got {reference_size}")
        if out_channels < 2:
            raise ValueError(
                f"nestedformer has a softmax output: out_channels must be >= 2, got {out_channels}"
            )
        self.out_channels = out_channels
        grids = [[int(s) // 2**k for s in reference_size] for k in range(1, N_DOWN + 1)]
        width = features[4]
        self.encoders = nn.ModuleList(ModalityEncoder(features, grids, dropout) for _ in range(N_MODALITIES))
        self.spatial_embedding = nn.Conv3d(N_MODALITIES * width, width, 1)
        self.spatial_blocks = nn.ModuleList(
            TriOrientedBlock(width, heads, window_size, grids[-1] if layer == 0 else None, dropout)
            for layer in range(spatial_layers)
        )
        self.cross_modal = CrossModalityAttention(width, heads, tokens, grids[-1], dropout)
        self.bottleneck_convs = two_conv(N_MODALITIES * width, width)
        self.skips = nn.ModuleList(ModalityGate(features[k], gated_skips) for k in range(N_DOWN))
        outs = [features[5], *features[1:4]]
        self.decoder = nn.ModuleList(UpConcat(features[k + 1], features[k], outs[k]) for k in range(N_DOWN))
        self.final = nn.Conv3d(features[5], out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, out_channels, X, Y, Z)`` of ``x`` ``(B, 2, X, Y, Z)``."""
        validate_input(x, N_MODALITIES, "nestedformer")
        padded = pad_input(x, self.size_multiple)
        ct, pet = (encoder(padded[:, m : m + 1]) for m, encoder in enumerate(self.encoders))
        f = self.nmafa(ct[-1], pet[-1])
        for k in reversed(range(N_DOWN)):
            f = self.decoder[k](f, self.skips[k]((ct[k], pet[k])))
        return crop_output(self.final(f), x.shape[2:])

    def nmafa(self, ct: Tensor, pet: Tensor) -> Tensor:
        """NMaFA plus the convolutional bottleneck path: ``(B, C, x, y, z)`` from the two modalities'
        bottleneck features ``(B, C, x, y, z)``."""
        stacked = torch.cat((ct, pet), dim=1)
        q = self.spatial_embedding(stacked).movedim(1, -1)
        for block in self.spatial_blocks:
            q = block(q)
        return self.cross_modal(q, (ct, pet)).movedim(-1, 1) + self.bottleneck_convs(stacked)


@register_model("nestedformer")
def nestedformer(**kwargs: object) -> NestedFormer:
    """NestedFormer (Xing et al., MICCAI 2022): per-modality PoolFormer encoders, NMaFA, gated skips."""
    return NestedFormer(**kwargs)  # type: ignore[arg-type]
