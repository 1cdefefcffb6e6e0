"""The baselines of the paper's Table 1 as MONAI networks with early fusion of CT and PET.

Every factory builds a MONAI network with ``in_channels=2`` (channel 0 CT, channel 1 PET) and wraps it in
:class:`PadCropNetwork`, which checks the input, pads the spatial size up to what the network accepts
(a multiple of its total down-sampling, or UNETR's fixed ``img_size``) and crops the logits back, so that
every model honours the contract of ``docs/internals.md``: ``(B, 2, X, Y, Z)`` in, logits
``(B, out_channels, X, Y, Z)`` out, ``output_activation = "softmax"``. Parameter counts below are at the
default settings with ``out_channels=2`` (table in ``docs/baselines.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.networks.nets import UNETR, BasicUNet, DynUNet, SegResNet, SwinUNETR, UNet, VNet
from monai.utils import optional_import
from torch import nn

from h2aseg.models._checks import validate_input
from h2aseg.models.padcrop import IN_CHANNELS, DeepSupervisedPadCropNetwork, PadCropNetwork, size3
from h2aseg.models.registry import register_model

__all__ = ["DeepSupervisedPadCropNetwork", "PadCropNetwork", "nnunet_kernels_strides", "validate_input"]


def _require_einops(model_name: str) -> None:
    """MONAI's transformer networks need ``einops``, an optional MONAI dependency; fail at build time."""
    if not optional_import("einops")[1]:
        raise ImportError(f"{model_name} needs einops (a MONAI optional dependency): pip install einops")


@register_model("unet3d")
def unet3d(
    out_channels: int = 2,
    features: Sequence[int] = (32, 32, 64, 128, 256, 32),
    norm: str = "instance",
    dropout: float = 0.0,
) -> PadCropNetwork:
    """UNet-3D (Çiçek et al., MICCAI 2016) as MONAI ``BasicUNet``: two 3³ convolutions per level, max
    pooling, transposed-convolution up-sampling, skip concatenation; four poolings, inputs padded to
    multiples of 16. 5,747,202 parameters at the defaults.

    Args:
        out_channels: logit channels (2: background, lesion).
        features: six feature counts, five encoder levels then the last decoder level (MONAI ``BasicUNet``).
        norm: normalisation layer name (``"instance"`` or ``"batch"``).
        dropout: dropout probability inside the convolution blocks.
    """
    net = BasicUNet(3, IN_CHANNELS, out_channels, features=tuple(features), norm=norm, dropout=dropout)
    return PadCropNetwork(net, "unet3d", out_channels, size_multiple=(16, 16, 16))


@register_model("vnet")
def vnet(
    out_channels: int = 2,
    dropout_prob_down: float | None = 0.5,
    dropout_prob_up: tuple[float | None, float] = (0.5, 0.5),
) -> PadCropNetwork:
    """V-Net (Milletari et al., 3DV 2016) as MONAI ``VNet``: residual stages with 5³ convolutions and strided
    down-convolutions; four down-samplings, inputs padded to multiples of 16. 45,599,898 parameters.

    Args:
        out_channels: logit channels.
        dropout_prob_down: dropout in the two deepest down transitions (MONAI default 0.5).
        dropout_prob_up: dropout in the two deepest up transitions.
    """
    net = VNet(
        3,
        IN_CHANNELS,
        out_channels,
        dropout_prob_down=dropout_prob_down,
        dropout_prob_up=tuple(dropout_prob_up),
    )
    return PadCropNetwork(net, "vnet", out_channels, size_multiple=(16, 16, 16))


@register_model("resunet3d")
def resunet3d(
    out_channels: int = 2,
    channels: Sequence[int] = (32, 64, 128, 256, 512),
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> PadCropNetwork:
    """Residual 3-D U-Net as MONAI ``UNet`` with residual units and strided convolutions (stride 2 at every
    level); inputs padded to multiples of ``2 ** (len(channels) - 1)``. 19,218,657 parameters.

    Args:
        out_channels: logit channels.
        channels: feature counts per level, finest first.
        num_res_units: residual units per block.
        dropout: dropout probability.
    """
    if len(channels) < 2:
        raise ValueError(f"resunet3d needs at least 2 levels in channels, got {tuple(channels)}")
    strides = (2,) * (len(channels) - 1)
    net = UNet(
        3,
        IN_CHANNELS,
        out_channels,
        channels=tuple(channels),
        strides=strides,
        num_res_units=num_res_units,
        dropout=dropout,
    )
    multiple = 2 ** len(strides)
    return PadCropNetwork(net, "resunet3d", out_channels, size_multiple=(multiple,) * 3)


@register_model("unetr")
def unetr(
    out_channels: int = 2,
    img_size: Sequence[int] = (128, 128, 64),
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    dropout_rate: float = 0.0,
) -> PadCropNetwork:
    """UNETR (Hatamizadeh et al., WACV 2022) as MONAI ``UNETR``: a ViT encoder on 16³ patches with a
    convolutional decoder. The position embedding fixes the input size to ``img_size`` (default the paper's
    patch 128×128×64): smaller inputs are zero-padded up to it and cropped back, larger inputs raise
    ``ValueError`` and must go through the sliding-window inferer with ``roi_size=img_size``.
    95,960,738 parameters at the defaults.

    Args:
        out_channels: logit channels.
        img_size: the fixed spatial size, each a multiple of 16.
        feature_size: decoder feature size.
        hidden_size: transformer width (divisible by ``num_heads``).
        mlp_dim: transformer MLP width.
        num_heads: attention heads.
        dropout_rate: transformer dropout.

    Raises:
        ImportError: ``einops`` is not installed.
    """
    _require_einops("unetr")
    size = size3(img_size)
    if any(s % 16 for s in size):
        raise ValueError(f"unetr img_size must be multiples of 16 (its patch size), got {size}")
    net = UNETR(
        IN_CHANNELS,
        out_channels,
        img_size=size,
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        dropout_rate=dropout_rate,
    )
    for block in net.vit.blocks:
        # MONAI builds this LayerNorm even without cross-attention; an unused parameter breaks DDP.
        block.norm_cross_attn = nn.Identity()
    return PadCropNetwork(net, "unetr", out_channels, fixed_size=size)


@register_model("swin-unetr")
def swin_unetr(
    out_channels: int = 2,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    dropout_path_rate: float = 0.0,
    use_checkpoint: bool = False,
) -> PadCropNetwork:
    """SwinUNETR (Hatamizadeh et al., BrainLes 2021) as MONAI ``SwinUNETR``: a Swin transformer encoder
    (window 7) with a convolutional decoder; five halvings, inputs padded to multiples of 32.
    62,188,436 parameters at the defaults.

    Args:
        out_channels: logit channels.
        feature_size: embedding size, a multiple of 12.
        depths: Swin blocks per stage.
        num_heads: attention heads per stage.
        dropout_path_rate: stochastic-depth rate.
        use_checkpoint: gradient checkpointing (less memory, slower).

    Raises:
        ImportError: ``einops`` is not installed.
    """
    _require_einops("swin-unetr")
    net = SwinUNETR(
        IN_CHANNELS,
        out_channels,
        feature_size=feature_size,
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        dropout_path_rate=dropout_path_rate,
        use_checkpoint=use_checkpoint,
    )
    return PadCropNetwork(net, "swin-unetr", out_channels, size_multiple=(32, 32, 32))


def nnunet_kernels_strides(
    patch_size: Sequence[int],
    spacing_mm: Sequence[float],
    max_poolings: int = 5,
    min_feature_size: int = 4,
) -> tuple[list[list[int]], list[list[int]]]:
    """Convolution kernels and strides per level, derived from the patch and the spacing as nnU-Net does.

    An axis is halved at a level while its spacing is at most twice the finest current spacing and its
    feature map stays at least ``min_feature_size``; its kernel is 3 there and 1 on a much coarser axis.
    The first level has stride 1 and the bottleneck kernel 3.

    Args:
        patch_size: training patch ``(X, Y, Z)`` in voxels.
        spacing_mm: voxel spacing ``(X, Y, Z)`` in mm.
        max_poolings: most down-samplings per axis.
        min_feature_size: smallest feature-map size in voxels.

    Returns:
        ``(kernels, strides)``, one ``[kx, ky, kz]`` per level, finest first.

    Raises:
        ValueError: fewer than two poolings are possible (DynUNet needs at least three levels).
    """
    sizes = np.asarray(size3(patch_size), dtype=float)
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or (spacing <= 0).any():
        raise ValueError(f"spacing_mm must be 3 positive numbers, got {tuple(spacing_mm)}")
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1, 1, 1]]
    while len(strides) <= max_poolings:
        isotropic_enough = spacing / spacing.min() <= 2
        stride = np.where(isotropic_enough & (sizes >= 2 * min_feature_size), 2, 1)
        if (stride == 1).all():
            break
        kernels.append(np.where(isotropic_enough, 3, 1).tolist())
        strides.append(stride.tolist())
        sizes, spacing = sizes / stride, spacing * stride
    kernels.append([3, 3, 3])
    if len(strides) < 3:
        raise ValueError(
            f"patch_size {tuple(patch_size)} with spacing {tuple(spacing_mm)} allows fewer than 2 poolings"
        )
    return kernels, strides


@register_model("dynunet")
def dynunet(
    out_channels: int = 2,
    patch_size: Sequence[int] = (128, 128, 64),
    spacing_mm: Sequence[float] = (2.0, 2.0, 3.0),
    filters: Sequence[int] | None = None,
    deep_supervision: bool = False,
    deep_supr_num: int = 2,
    res_block: bool = False,
    max_poolings: int = 5,
) -> PadCropNetwork:
    """nnU-Net (Isensee et al., Nat. Methods 2021) as MONAI ``DynUNet`` with kernels and strides from
    :func:`nnunet_kernels_strides`; inputs padded to the product of the strides per axis. With the defaults
    (AutoPET patch 128×128×64 at 2×2×3 mm) the strides are 1, 2, 2, 2, 2, (2, 2, 1), the filters
    32, 64, 128, 256, 320, 320, and 30,780,674 parameters.

    Args:
        out_channels: logit channels.
        patch_size: training patch ``(X, Y, Z)`` in voxels.
        spacing_mm: voxel spacing ``(X, Y, Z)`` in mm.
        filters: feature counts per level; ``None`` gives nnU-Net's ``min(32 * 2**i, 320)``.
        deep_supervision: add ``deep_supr_num`` coarser heads and a ``forward_deep`` method.
        deep_supr_num: number of extra heads (less than the number of up-samplings).
        res_block: residual blocks instead of plain double convolutions.
        max_poolings: most down-samplings per axis.
    """
    kernels, strides = nnunet_kernels_strides(patch_size, spacing_mm, max_poolings=max_poolings)
    net = DynUNet(
        3,
        IN_CHANNELS,
        out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=None if filters is None else list(filters),
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=res_block,
    )
    multiple = np.prod(np.asarray(strides), axis=0).tolist()
    wrapper = DeepSupervisedPadCropNetwork if deep_supervision else PadCropNetwork
    return wrapper(net, "dynunet", out_channels, size_multiple=multiple)


@register_model("segresnet")
def segresnet(
    out_channels: int = 2,
    init_filters: int = 32,
    blocks_down: Sequence[int] = (1, 2, 2, 4),
    blocks_up: Sequence[int] = (1, 1, 1),
    dropout_prob: float | None = None,
) -> PadCropNetwork:
    """SegResNet (Myronenko, BrainLes 2018) as MONAI ``SegResNet`` without the VAE branch: residual
    encoder with group norm, light decoder; inputs padded to multiples of ``2 ** (len(blocks_down) - 1)``.
    18,796,866 parameters at the defaults (32 initial filters as in the paper).

    Args:
        out_channels: logit channels.
        init_filters: features of the first level (a multiple of 8, the group-norm groups).
        blocks_down: residual blocks per encoder level.
        blocks_up: residual blocks per decoder level (one fewer level than ``blocks_down``).
        dropout_prob: dropout after the first convolution.
    """
    if init_filters % 8:
        raise ValueError(f"segresnet init_filters must be a multiple of 8 (group norm), got {init_filters}")
    net = SegResNet(
        3,
        init_filters=init_filters,
        in_channels=IN_CHANNELS,
        out_channels=out_channels,
        dropout_prob=dropout_prob,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
    )
    multiple = 2 ** (len(blocks_down) - 1)
    return PadCropNetwork(net, "segresnet", out_channels, size_multiple=(multiple,) * 3)
