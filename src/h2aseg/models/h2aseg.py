"""H2ASeg: hierarchical adaptive interaction and weighting network for PET/CT segmentation.

Assembles the blocks of :mod:`h2aseg.models.blocks`, :mod:`h2aseg.models.attention` and
:mod:`h2aseg.models.tamw` into the network of the authors' code and registers the four
rows of the paper's ablation (Table 2). ``docs/model.md`` lists every difference between
the paper's text and the official code and which argument selects which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from h2aseg.models._checks import validate_input
from h2aseg.models.attention import BDSA, MCSA, AttentionImpl, BDSAFusion, WindowMerge
from h2aseg.models.blocks import FirstResBlock, PreActResBlock, SegmentationHead
from h2aseg.models.registry import OUTPUT_ACTIVATIONS, OutputActivation, register_model
from h2aseg.models.tamw import TAMW, TAMWMask

N_LEVELS = 5


def _upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    """Trilinear up-sampling with ``align_corners=True``, as everywhere in the official code."""
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=True)


class H2ASeg(nn.Module):
    """H2ASeg (Lu et al., "H2ASeg: Hierarchical Adaptive Interaction and Weighting Network
    for Tumor Segmentation in PET/CT Images", MICCAI 2024), exactly as the authors' code.

    Two ResUNet-3D encoders (CT, PET) with MCSA after levels 2 and 3 and a global BDSA with
    residual after levels 4 and 5; a decoder whose four levels weight the skip features
    with TAMW, then a residual block and a deep-supervision head.

    Input ``(B, 2, X, Y, Z)``, channel 0 CT, channel 1 PET. Sizes that are not multiples of
    :attr:`size_multiple` are padded inside (edge replication, split evenly between both
    ends of each axis) and cropped back.

    Args:
        out_channels: logit channels; ``None`` means 2 for softmax, 1 for sigmoid.
        channels: features per modality at each of the five levels.
        window_size: MCSA window ``(wx, wy, wz)`` in voxels of the level-2/3 feature maps.
        dropout: ``Dropout3d`` probability in encoder and decoder blocks.
        use_mcsa: keep the cross-modal attention (MCSA at levels 2–3 and the global BDSA
            at levels 4–5); without it the two encoders never interact.
        use_tamw: keep TAMW; without it the decoder concatenates ``(ct, pet, f)``.
        bdsa_fusion: ``"mean"`` (official code) or ``"concat"`` (paper text).
        output_activation: ``"softmax"`` (official code, two classes, CE + Dice) or
            ``"sigmoid"`` (paper text, one channel, BCE + Dice).
        attention_dropout: dropout on attention weights and outputs; ``None`` = ``dropout``.
        attention_impl: ``"sdpa"`` (fused kernels) or ``"naive"`` (explicit softmax).
        checkpoint_attention: recompute attention maps in backward instead of storing them
            (CPU training with attention dropout: less memory, more time).
        window_merge: MCSA window merge, ``"min"`` (official code: kernel = stride =
            ``min(window_size)`` on every axis) or ``"window"`` (paper: one token per window).
        tamw_mask: what TAMW masks with the coarse prediction, ``"encoder"`` (official code:
            CT and PET features) or ``"all"`` (paper: also the decoder feature).

    Example:
        >>> model = H2ASeg(channels=(2, 4, 8, 16, 32)).eval()
        >>> model(torch.randn(1, 2, 32, 32, 16)).shape
        torch.Size([1, 2, 32, 32, 16])
    """

    def __init__(
        self,
        out_channels: int | None = None,
        channels: Sequence[int] = (8, 16, 32, 64, 128),
        window_size: tuple[int, int, int] = (8, 8, 4),
        dropout: float = 0.5,
        use_mcsa: bool = True,
        use_tamw: bool = True,
        bdsa_fusion: BDSAFusion = "mean",
        output_activation: OutputActivation = "softmax",
        attention_dropout: float | None = None,
        attention_impl: AttentionImpl = "sdpa",
        checkpoint_attention: bool = False,
        window_merge: WindowMerge = "min",
        tamw_mask: TAMWMask = "encoder",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        window_size = tuple(int(w) for w in window_size)
        choices = {
            "output_activation": (output_activation, OUTPUT_ACTIVATIONS),
            "bdsa_fusion": (bdsa_fusion, ("mean", "concat")),
            "attention_impl": (attention_impl, ("sdpa", "naive")),
            "window_merge": (window_merge, ("min", "window")),
            "tamw_mask": (tamw_mask, ("encoder", "all")),
        }
        out_channels = _check_arguments(out_channels, channels, window_size, output_activation, choices)
        self.out_channels = out_channels
        self.output_activation = output_activation
        self.channels = channels
        self.window_size = window_size
        self.use_mcsa = use_mcsa
        self.use_tamw = use_tamw
        self.size_multiple = _size_multiple(window_size, use_mcsa, window_merge)
        attention_dropout = dropout if attention_dropout is None else attention_dropout

        self.encoder = _dual_encoder(channels, dropout)
        self.interaction = nn.ModuleList()
        if use_mcsa:
            options = {
                "dropout": attention_dropout,
                "fusion": bdsa_fusion,
                "attention_impl": attention_impl,
                "checkpoint_attention": checkpoint_attention,
            }
            self.interaction.extend(
                MCSA(c, window_size, channel_scale=4, merge=window_merge, **options) for c in channels[1:3]
            )
            self.interaction.extend(
                BDSA(c, channel_scale=1, window=None, residual=True, **options) for c in channels[3:]
            )
        self.tamw = nn.ModuleList(
            TAMW(channels[k], 2 * channels[k + 1], output_activation=output_activation, mask=tamw_mask)
            for k in range(N_LEVELS - 1)
            if use_tamw
        )
        self.decoder = nn.ModuleList(
            PreActResBlock(2 * channels[k] + 2 * channels[k + 1], 2 * channels[k], 1, dropout)
            for k in range(N_LEVELS - 1)
        )
        self.heads = nn.ModuleList(SegmentationHead(2 * c, out_channels) for c in channels)

    def forward(self, x: Tensor) -> Tensor:
        """Finest logits ``(B, out_channels, X, Y, Z)`` of ``x`` ``(B, 2, X, Y, Z)``."""
        padded, crop = self._pad(x)
        return self._decode(self._encode(padded), all_heads=False)[0][crop].contiguous()

    def forward_deep(self, x: Tensor) -> list[Tensor]:
        """The five deep-supervision logits, finest first, each ``(B, out_channels, X, Y, Z)``.

        Coarse logits are up-sampled trilinearly (``align_corners=True``) to the padded
        input size, as the official code does to the input size, then cropped.
        """
        padded, crop = self._pad(x)
        size = padded.shape[2:]
        logits = self._decode(self._encode(padded), all_heads=True)
        return [(y if y.shape[2:] == size else _upsample(y, size))[crop].contiguous() for y in logits]

    def encode(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Encoder features after the interaction modules, levels 1–5 as ``(ct, pet)`` pairs.

        Features are on the padded grid, which is the input grid when every size is a
        multiple of :attr:`size_multiple`; level ``k`` is ``(B, channels[k-1], X/2^(k-1), ...)``.
        """
        padded, _ = self._pad(x)
        return [
            (both[:, :c], both[:, c:]) for both, c in zip(self._encode(padded), self.channels, strict=True)
        ]

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[slice, ...]]:
        """Check ``x``, pad it to a multiple of :attr:`size_multiple` and make it channels-last
        (faster oneDNN convolutions, zero-copy attention tokens); return the crop back."""
        validate_input(x, model_name="H2ASeg")
        sizes = x.shape[2:]
        extra = [-size % multiple for size, multiple in zip(sizes, self.size_multiple, strict=True)]
        crop = (
            slice(None),
            slice(None),
            *(slice(e // 2, e // 2 + s) for e, s in zip(extra, sizes, strict=True)),
        )
        if any(extra):
            x = F.pad(
                x,
                [p for e in reversed(extra) for p in (e // 2, e - e // 2)],
                mode="replicate",
            )
        return x.contiguous(memory_format=torch.channels_last_3d), crop

    def _encode(self, x: Tensor) -> list[Tensor]:
        """Stacked ``(B, 2 * channels[k], ...)`` CT/PET features of levels 1–5 (CT first)."""
        features = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if self.use_mcsa and level > 0:
                x = self.interaction[level - 1](x)
            features.append(x)
        return features

    def _decode(self, features: list[Tensor], all_heads: bool) -> list[Tensor]:
        """Logits of the heads at their own resolution, finest first.

        Coarse heads feed TAMW; without TAMW and with ``all_heads=False`` only the finest
        head runs. Entries that were not computed are absent, so the list has one element.
        """
        f = features[-1]
        need_coarse = all_heads or self.use_tamw
        logits = [self.heads[-1](f)] if need_coarse else []
        for k in reversed(range(N_LEVELS - 1)):
            skip = features[k]
            f = _upsample(f, skip.shape[2:])
            f = self.tamw[k](skip, f, logits[-1]) if self.use_tamw else torch.cat((skip, f), dim=1)
            f = self.decoder[k](f)
            if need_coarse or k == 0:
                logits.append(self.heads[k](f))
        return logits[::-1]


def _check_arguments(
    out_channels: int | None,
    channels: tuple[int, ...],
    window: tuple[int, ...],
    output_activation: str,
    choices: dict[str, tuple[str, tuple[str, ...]]],
) -> int:
    """Validate constructor arguments; return the resolved ``out_channels``.

    ``choices`` maps an argument name to its value and the values it accepts.
    """
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if out_channels is None:
        out_channels = 1 if output_activation == "sigmoid" else 2
    if output_activation == "sigmoid" and out_channels != 1:
        raise ValueError(f"output_activation='sigmoid' needs out_channels=1, got {out_channels}")
    if output_activation == "softmax" and out_channels < 2:
        raise ValueError(f"output_activation='softmax' needs out_channels >= 2, got {out_channels}")
    if len(channels) != N_LEVELS or min(channels) < 1:
        raise ValueError(f"channels must be {N_LEVELS} positive integers, got {channels}")
    if len(window) != 3 or min(window) < 1:
        raise ValueError(f"window_size must be 3 positive integers, got {window}")
    return out_channels


def _size_multiple(window: tuple[int, int, int], use_mcsa: bool, merge: str) -> tuple[int, int, int]:
    """Per-axis size the input must be a multiple of: four stride-2 levels and, with MCSA,
    the window and the window-merge stride at levels 2 (1/2) and 3 (1/4)."""
    if not use_mcsa:
        return (16, 16, 16)
    strides = (min(window),) * 3 if merge == "min" else window
    return tuple(math.lcm(16, 4 * w, 4 * s) for w, s in zip(window, strides, strict=True))


def _dual_encoder(channels: tuple[int, ...], dropout: float) -> nn.ModuleList:
    """The CT and PET ResUNet encoders as one grouped network on stacked channels:
    a first block, then four stride-2 blocks."""
    blocks = [FirstResBlock(2, 2 * channels[0], dropout, groups=2)]
    blocks += [
        PreActResBlock(2 * channels[k - 1], 2 * channels[k], 2, dropout, groups=2) for k in range(1, N_LEVELS)
    ]
    return nn.ModuleList(blocks)


def _variant(kwargs: dict[str, object], **fixed: object) -> H2ASeg:
    """Build H2ASeg with the arguments that define a variant, refusing contradicting ones."""
    for name, value in fixed.items():
        if name in kwargs and kwargs[name] != value:
            raise ValueError(f"this H2ASeg variant sets {name}={value}, got {name}={kwargs[name]}")
    return H2ASeg(**{**kwargs, **fixed})


@register_model("h2aseg")
def h2aseg(**kwargs: object) -> H2ASeg:
    """The full network: MCSA and TAMW (Table 2, last row)."""
    return _variant(kwargs)


@register_model("h2aseg-baseline")
def h2aseg_baseline(**kwargs: object) -> H2ASeg:
    """Dual-branch ResUNet with deep supervision, no MCSA, no TAMW (Table 2, first row)."""
    return _variant(kwargs, use_mcsa=False, use_tamw=False)


@register_model("h2aseg-mcsa")
def h2aseg_mcsa(**kwargs: object) -> H2ASeg:
    """Baseline + MCSA (Table 2, second row)."""
    return _variant(kwargs, use_tamw=False)


@register_model("h2aseg-tamw")
def h2aseg_tamw(**kwargs: object) -> H2ASeg:
    """Baseline + TAMW (Table 2, third row)."""
    return _variant(kwargs, use_mcsa=False)
