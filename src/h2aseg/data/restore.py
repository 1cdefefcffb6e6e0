"""The geometry restore: a prediction on the preprocessed grid back onto the original PET or CT grid,
by the geometry keys the pipelines of :mod:`h2aseg.data.transforms` record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor


def _tensor_from(data: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    """``data[key]`` as a float64 array of ``shape`` (a leading batch axis of 1 is dropped)."""
    if key not in data:
        raise ValueError(f"case dict has no '{key}': pass a dict produced by h2aseg.data.transforms")
    array = np.asarray(torch.as_tensor(data[key]).detach().cpu(), dtype=np.float64)
    if array.shape == (1, *shape):
        array = array[0]
    if array.shape != shape:
        raise ValueError(f"'{key}' has shape {array.shape}, expected {shape}")
    return array


def restore_to_original(
    seg: torch.Tensor | np.ndarray,
    data: Mapping[str, Any],
    grid: Literal["pet", "ct"] = "pet",
    mode: Literal["nearest", "linear"] = "nearest",
) -> tuple[np.ndarray, np.ndarray]:
    """Maps a prediction on the preprocessed grid back onto the original PET (or CT) grid.

    Resampling by affine (working grid → original file grid) undoes the crop, the respacing and
    the reorientation in one step; voxels outside the working grid become 0.

    Args:
        seg: mask or probabilities on the preprocessed grid, ``(X, Y, Z)`` or ``(C, X, Y, Z)``.
        data: the case dict from the pipelines (``preprocessed_affine``, ``original_{grid}_affine``,
            ``original_{grid}_shape``).
        grid: ``"pet"`` (the case grid) or ``"ct"`` (the CT file's grid, which HECKTOR scores on).
        mode: ``"nearest"`` for masks (dtype kept), ``"linear"`` (trilinear) for probabilities
            (float32).

    Returns:
        ``(array, affine)``: the array on the original grid, ``(X', Y', Z')`` or ``(C, X', Y', Z')``
        like ``seg``, and that grid's NIfTI affine ``(4, 4)`` float64.
    """
    if grid not in ("pet", "ct") or mode not in ("nearest", "linear"):
        raise ValueError(f"grid must be 'pet' or 'ct' and mode 'nearest' or 'linear', got {grid!r}, {mode!r}")
    if isinstance(seg, torch.Tensor):
        values = seg.detach().cpu().as_subclass(torch.Tensor)
    else:
        values = torch.from_numpy(np.ascontiguousarray(seg))
    if values.ndim not in (3, 4):
        raise ValueError(f"prediction must be (X, Y, Z) or (C, X, Y, Z), got shape {tuple(values.shape)}")
    channel_first = values if values.ndim == 4 else values[None]
    if "image" in data and tuple(channel_first.shape[1:]) != tuple(data["image"].shape[-3:]):
        raise ValueError(
            f"prediction shape {tuple(channel_first.shape[1:])} does not match the preprocessed image "
            f"{tuple(data['image'].shape[-3:])}"
        )
    source_affine = _tensor_from(data, "preprocessed_affine", (4, 4))
    target_affine = _tensor_from(data, f"original_{grid}_affine", (4, 4))
    target_shape = tuple(int(n) for n in _tensor_from(data, f"original_{grid}_shape", (3,)))
    resampler = mt.SpatialResample(
        mode="nearest" if mode == "nearest" else "bilinear", padding_mode="zeros", dtype=np.float32
    )
    moved = resampler(
        MetaTensor(channel_first.to(torch.float32), affine=torch.as_tensor(source_affine)),
        dst_affine=torch.as_tensor(target_affine),
        spatial_size=target_shape,
    )
    restored = moved.as_tensor().numpy().astype(values.numpy().dtype if mode == "nearest" else np.float32)
    return (restored if values.ndim == 4 else restored[0]), target_affine
