"""Cross-modal spatial attention of H2ASeg: BDSA and MCSA.

Both modules work on the two modalities stacked on the channel axis,
``(B, 2 * C, X, Y, Z)`` with CT first, so one window partition, one projection and one
attention call serve CT and PET together.

BDSA (bidirectional dual spatial attention) runs, for each target modality ``t`` with
source ``s`` (CT ← PET and PET ← CT), a target→target attention and a source→target
attention and averages them (the official code). Those are four attention heads in one
``scaled_dot_product_attention`` call:

| head | query from | key and value from |
| --- | --- | --- |
| 0: CT tt | CT | CT |
| 1: CT st | CT | PET |
| 2: PET tt | PET | PET |
| 3: PET st | PET | CT |

All query, key and value projections of both modalities are one matrix product on the
stacked tokens (the weight is assembled block-wise from the per-modality projections, so
the zero blocks never train), and the output projection of both modalities is another.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from h2aseg.models.blocks import GroupPReLU, instance_norm

AttentionImpl = Literal["sdpa", "naive"]
BDSAFusion = Literal["mean", "concat"]
WindowMerge = Literal["min", "window"]

# (target modality, kind) of each head; kind 0 = target→target, 1 = source→target.
_HEADS = ((0, 0), (0, 1), (1, 0), (1, 1))


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float, dropout_p: float, impl: AttentionImpl) -> Tensor:
    """Softmax attention ``dropout(softmax(q kᵀ · scale)) v`` over the token axis.

    Args:
        q: queries ``(B, H, N, E)``.
        k: keys ``(B, H, N, E)``.
        v: values ``(B, H, N, Ev)``.
        scale: factor applied to the scores.
        dropout_p: dropout probability on the attention weights (0 in eval mode).
        impl: ``"sdpa"`` (``torch.nn.functional.scaled_dot_product_attention``, which
            never builds the ``N × N`` matrix when a fused kernel applies) or ``"naive"``
            (explicit softmax, for comparison and tests).

    Returns:
        ``(B, H, N, Ev)``.
    """
    if impl == "naive":
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * scale, dim=-1)
        return torch.matmul(F.dropout(weights, dropout_p, training=dropout_p > 0), v)
    width = v.shape[-1] - q.shape[-1]
    if width > 0 and (dropout_p == 0.0 or q.is_cuda):
        # Flash kernels need equal head sizes; zero columns leave q kᵀ unchanged. CPU training
        # with dropout always takes SDPA's math kernel, where the padding would only cost.
        q, k = F.pad(q, (0, width)), F.pad(k, (0, width))
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)


def window_partition(x: Tensor, window: tuple[int, int, int]) -> Tensor:
    """Split a volume into non-overlapping windows of tokens.

    Args:
        x: ``(B, C, X, Y, Z)`` with each spatial size a multiple of the window.
        window: window size ``(wx, wy, wz)`` in voxels.

    Returns:
        ``(B * nW, wx * wy * wz, C)``, windows in raster order, channels last (a view of a
        channels-last ``x`` when there is a single window).
    """
    b, c, sx, sy, sz = x.shape
    wx, wy, wz = window
    grid = x.reshape(b, c, sx // wx, wx, sy // wy, wy, sz // wz, wz)
    return grid.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(-1, wx * wy * wz, c)


def window_reverse(tokens: Tensor, window: tuple[int, int, int], shape: tuple[int, int, int, int]) -> Tensor:
    """Inverse of :func:`window_partition`.

    Args:
        tokens: ``(B * nW, wx * wy * wz, C)``.
        window: window size ``(wx, wy, wz)``.
        shape: ``(B, X, Y, Z)`` of the volume.

    Returns:
        ``(B, C, X, Y, Z)`` in channels-last memory order (a view of ``tokens`` when there is
        a single window).
    """
    b, sx, sy, sz = shape
    wx, wy, wz = window
    grid = tokens.reshape(b, sx // wx, sy // wy, sz // wz, wx, wy, wz, tokens.shape[-1])
    return grid.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, sx, sy, sz, -1).permute(0, 4, 1, 2, 3)


def _on_modality(weight_t: Tensor, modality: int) -> Tensor:
    """Embed a ``(C, O)`` projection of one modality into a ``(2C, O)`` one on stacked tokens."""
    zeros = torch.zeros_like(weight_t)
    return torch.cat((weight_t, zeros) if modality == 0 else (zeros, weight_t), dim=0)


class BDSA(nn.Module):
    """Bidirectional dual spatial attention between CT and PET (H2ASeg, Lu et al., MICCAI 2024).

    For target ``t`` and source ``s``: ``A_tt = softmax(Q_tt(t) K_tt(t)ᵀ/√d) V_tt(t)`` and
    ``A_st = softmax(Q_st(t) K_st(s)ᵀ/√d) V_st(s)``, fused as ``Out((A_tt + A_st) / 2)``
    (official code, ``fusion="mean"``) or ``Conv3x3(cat(A_tt, A_st))`` (paper text,
    ``fusion="concat"``), then dropout and, optionally, ``+ t``. Both directions run at
    once on stacked features.

    Args:
        channels: channels ``C`` of one modality.
        channel_scale: query/key size is ``d = C // channel_scale``.
        window: attention window ``(wx, wy, wz)``; ``None`` attends over the whole volume.
        dropout: dropout on the attention weights and on the fused output.
        residual: add the target feature to the output.
        fusion: ``"mean"`` (official code) or ``"concat"`` (paper text).
        attention_impl: ``"sdpa"`` or ``"naive"`` (see :func:`attend`).
        checkpoint_attention: in training with attention dropout, keep only queries, keys
            and values and recompute the attention in backward. With dropout, SDPA on CPU
            runs its math kernel, which stores three ``N × N`` maps per head for backward.

    Example:
        >>> bdsa = BDSA(16, channel_scale=4, window=(8, 8, 4))
        >>> bdsa(torch.randn(1, 32, 16, 16, 8)).shape
        torch.Size([1, 32, 16, 16, 8])
    """

    def __init__(
        self,
        channels: int,
        channel_scale: int = 1,
        window: tuple[int, int, int] | None = None,
        dropout: float = 0.0,
        residual: bool = False,
        fusion: BDSAFusion = "mean",
        attention_impl: AttentionImpl = "sdpa",
        checkpoint_attention: bool = False,
    ) -> None:
        super().__init__()
        if channels // channel_scale < 1:
            raise ValueError(f"channels={channels} is smaller than channel_scale={channel_scale}")
        if fusion not in ("mean", "concat"):
            raise ValueError(f"fusion must be 'mean' or 'concat', got {fusion!r}")
        if attention_impl not in ("sdpa", "naive"):
            raise ValueError(f"attention_impl must be 'sdpa' or 'naive', got {attention_impl!r}")
        self.channels = channels
        self.head_dim = channels // channel_scale
        self.window = window
        self.dropout = dropout
        self.residual = residual
        self.fusion = fusion
        self.attention_impl = attention_impl
        self.checkpoint_attention = checkpoint_attention
        # Indexed [target modality (CT, PET)][kind (target→target, source→target)], each (out, in).
        self.query = nn.Parameter(torch.empty(2, 2, self.head_dim, channels))
        self.key = nn.Parameter(torch.empty(2, 2, self.head_dim, channels))
        self.value = nn.Parameter(torch.empty(2, 2, channels, channels))
        bound = 1.0 / math.sqrt(channels)  # the default init of a bias-free 1×1×1 nn.Conv3d
        for weight in (self.query, self.key, self.value):
            nn.init.uniform_(weight, -bound, bound)
        if fusion == "mean":
            self.out = nn.Parameter(torch.empty(2, channels, channels))
            nn.init.uniform_(self.out, -bound, bound)
        else:
            self.fuse = nn.Conv3d(4 * channels, 2 * channels, 3, padding=1, groups=2, bias=False)

    def _projection(self) -> Tensor:
        """Weight ``(2C, 8d + 4C)`` mapping stacked tokens to all queries, keys and values."""
        columns = [_on_modality(self.query[t, kind].T, t) for t, kind in _HEADS]
        for param in (self.key, self.value):
            columns += [_on_modality(param[t, kind].T, t if kind == 0 else 1 - t) for t, kind in _HEADS]
        return torch.cat(columns, dim=1)

    def _output_projection(self) -> Tensor:
        """Weight ``(4C, 2C)``: the mean of each target's two heads, then its ``Out``."""
        ct_out, pet_out = (0.5 * self.out[t].T for t in (0, 1))
        return torch.block_diag(torch.cat((ct_out, ct_out)), torch.cat((pet_out, pet_out)))

    def forward(self, x: Tensor) -> Tensor:
        """Attend CT and PET to each other.

        Args:
            x: stacked features ``(B, 2C, X, Y, Z)``, CT channels first; with a window, each
                spatial size must be a multiple of it.

        Returns:
            ``(B, 2C, X, Y, Z)``, CT channels first.
        """
        b, _, sx, sy, sz = x.shape
        window = self.window or (sx, sy, sz)
        tokens = window_partition(x, window)
        n_windows, n_tokens, _ = tokens.shape
        c, d = self.channels, self.head_dim
        projected = torch.matmul(tokens, self._projection())
        q, k, v = projected.split((4 * d, 4 * d, 4 * c), dim=-1)
        q = q.unflatten(-1, (4, d)).transpose(1, 2)
        k = k.unflatten(-1, (4, d)).transpose(1, 2)
        v = v.unflatten(-1, (4, c)).transpose(1, 2)
        dropout_p = self.dropout if self.training else 0.0
        arguments = (q, k, v, d**-0.5, dropout_p, self.attention_impl)
        if self.checkpoint_attention and dropout_p > 0 and torch.is_grad_enabled():
            # Recomputed in backward with the same dropout mask (the RNG state is restored).
            heads = checkpoint(attend, *arguments, use_reentrant=False)
        else:
            heads = attend(*arguments)
        heads = heads.transpose(1, 2).reshape(n_windows, n_tokens, 4 * c)
        if self.fusion == "mean":
            fused = window_reverse(torch.matmul(heads, self._output_projection()), window, (b, sx, sy, sz))
        else:
            fused = self.fuse(window_reverse(heads, window, (b, sx, sy, sz)))
        fused = F.dropout(fused, self.dropout, self.training)
        return fused.add_(x) if self.residual else fused  # in place: ``fused`` is not saved for backward


class MCSA(nn.Module):
    """Modality-cooperative spatial attention (H2ASeg, Lu et al., MICCAI 2024).

    1. Window merge: a strided convolution per modality with kernel = stride = the
       smallest window side on every axis (official code, ``merge="min"``) or the window
       (paper text, ``merge="window"``: one token per window).
    2. Inter-window BDSA on the merged maps, trilinear up-sampling back,
       ``x1 = PReLU(IN(up + x))``.
    3. Intra-window BDSA on non-overlapping windows of ``x1``,
       ``out = PReLU(IN(intra + x1))``.

    Args:
        channels: channels ``C`` of one modality.
        window: window ``(wx, wy, wz)``; spatial sizes must be multiples of it and of
            ``min(window)``.
        dropout: attention dropout.
        channel_scale: query/key size ``C // channel_scale`` (4 in the official code).
        fusion: BDSA fusion, ``"mean"`` or ``"concat"``.
        attention_impl: ``"sdpa"`` or ``"naive"``.
        checkpoint_attention: see :class:`BDSA`.
        merge: window merge, ``"min"`` or ``"window"`` (see above).
    """

    def __init__(
        self,
        channels: int,
        window: tuple[int, int, int],
        dropout: float = 0.0,
        channel_scale: int = 4,
        fusion: BDSAFusion = "mean",
        attention_impl: AttentionImpl = "sdpa",
        checkpoint_attention: bool = False,
        merge: WindowMerge = "min",
    ) -> None:
        super().__init__()
        if merge not in ("min", "window"):
            raise ValueError(f"MCSA merge must be 'min' or 'window', got {merge!r}")
        kernel = (min(window),) * 3 if merge == "min" else tuple(window)
        self.merge = nn.Conv3d(2 * channels, 2 * channels, kernel, stride=kernel, groups=2)
        options = {
            "channel_scale": channel_scale,
            "dropout": dropout,
            "residual": False,
            "fusion": fusion,
            "attention_impl": attention_impl,
            "checkpoint_attention": checkpoint_attention,
        }
        self.inter = BDSA(channels, window=None, **options)
        self.act_inter = GroupPReLU(channels)
        self.intra = BDSA(channels, window=tuple(window), **options)
        self.act_intra = GroupPReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 2C, X, Y, Z)`` stacked CT/PET features → same shape."""
        inter = self.inter(self.merge(x))
        # In-place sums: interpolation and BDSA outputs are not saved for backward.
        inter = F.interpolate(inter, size=x.shape[2:], mode="trilinear", align_corners=True)
        x1 = self.act_inter(instance_norm(inter.add_(x)))
        return self.act_intra(instance_norm(self.intra(x1).add_(x1)))
