"""Label maps for evaluation: loading, the integer-class check, and the grid check or resampling.

A mask file must hold integer classes (0 = background); fractions, negative values and non-finite values
are refused with one line naming the file, never thresholded. Prediction and truth must lie on one grid
(same shape and affine); otherwise the prediction can be resampled onto the truth grid by nearest
neighbour as the HECKTOR 2022 organisers' notebook does (SimpleITK ``ResampleImageFilter`` with the
truth's size, origin, spacing and direction, ``sitkNearestNeighbor``, 0 outside the prediction; they
use it to crop or pad a prediction of the CT's spacing, here any grid is accepted).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "check_classes",
    "foreground_labels",
    "load_label_map",
    "load_label_pair",
    "resample_nearest",
]

AFFINE_TOLERANCE_MM = 1e-3
"""Largest difference between two affines' entries (mm) for which they are one grid."""


def load_label_map(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A mask file as an integer label map ``(X, Y, Z)`` (int16) and its image (for affine and header).

    Raises:
        ValueError: unreadable file, not 3-D, or values that are not integer classes 0..32767.
    """
    path = Path(path)
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise ValueError(f"{path}: not a readable NIfTI image ({error})") from error
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: a mask must be a 3-D image, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data) | (data != np.round(data))
        if bad.any():
            raise ValueError(
                f"{path}: labels must be integer classes, found the value {float(data[bad][0]):g} "
                f"in {int(bad.sum())} voxel(s)"
            )
    if data.size and (data.min() < 0 or data.max() > np.iinfo(np.int16).max):
        value = data.min() if data.min() < 0 else data.max()
        raise ValueError(f"{path}: labels must be integer classes 0, 1, 2, ..., found the value {value}")
    return np.asarray(data, dtype=np.int16), image


def foreground_labels(labels: np.ndarray) -> set[int]:
    """The non-zero values of a label map."""
    return set(np.unique(labels).tolist()) - {0}


def check_classes(labels: np.ndarray, path: Path, classes: Collection[int]) -> None:
    """Refuse a label map holding a foreground value outside ``classes`` (one line naming the file).

    Raises:
        ValueError: a label of ``labels`` is neither 0 nor in ``classes``.
    """
    unknown = sorted(foreground_labels(labels) - set(classes))
    if unknown:
        expected = ", ".join(str(label) for label in sorted({0, *classes}))
        raise ValueError(f"{path}: label {unknown[0]} is not one of the classes {expected} (0 = background)")


def load_label_pair(
    pred_path: Path, truth_path: Path, resample_to_truth: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Prediction and truth label maps on the truth grid, and the truth's voxel spacing in mm.

    Args:
        pred_path: predicted mask file.
        truth_path: ground-truth mask file.
        resample_to_truth: resample a prediction on another grid onto the truth grid (nearest
            neighbour) instead of refusing it.

    Raises:
        ValueError: a file is unreadable or not integer classes, or the grids differ and
            ``resample_to_truth`` is false (the message names both files).
    """
    pred, pred_image = load_label_map(pred_path)
    truth, truth_image = load_label_map(truth_path)
    same_shape = pred.shape == truth.shape
    affine_gap = float(np.abs(pred_image.affine - truth_image.affine).max())
    if not (same_shape and affine_gap <= AFFINE_TOLERANCE_MM):
        if not resample_to_truth:
            difference = (
                f"affines differ by up to {affine_gap:.4g} mm"
                if same_shape
                else f"shape {pred.shape} vs {truth.shape}"
            )
            raise ValueError(
                f"{pred_path} and {truth_path} are on different grids ({difference}): predict on the "
                "truth's grid (h2aseg predict --grid ct for HECKTOR) or pass --resample-to-truth"
            )
        pred = resample_nearest(pred, pred_image.affine, truth.shape, truth_image.affine)
    zooms = truth_image.header.get_zooms()[:3]
    return pred, truth, (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def resample_nearest(
    labels: np.ndarray, affine: np.ndarray, target_shape: tuple[int, ...], target_affine: np.ndarray
) -> np.ndarray:
    """Nearest-neighbour resampling of a label map onto another grid; 0 where it has no voxel.

    Args:
        labels: label map ``(X, Y, Z)`` with voxel-to-world ``affine`` (4 × 4, mm).
        target_shape: shape of the target grid.
        target_affine: voxel-to-world affine of the target grid.

    Returns:
        ``target_shape`` array of ``labels.dtype``: each target voxel takes the label of the source voxel
        whose centre is nearest to its centre (in source voxel coordinates).
    """
    target_to_source = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(
        target_affine, dtype=np.float64
    )
    return ndimage.affine_transform(
        labels,
        target_to_source[:3, :3],
        offset=target_to_source[:3, 3],
        output_shape=tuple(target_shape),
        order=0,
        mode="grid-constant",
        cval=0,
        prefilter=False,
    )
