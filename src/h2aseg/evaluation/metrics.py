"""Metrics of one case and one class: Dice, HD95, precision, recall, autoPET FPV/FNV; aggregated Dice.

Every function takes masks ``(X, Y, Z)`` (boolean, or numbers binarised as ``> 0``) on the same grid and,
where distances or volumes enter, the voxel spacing ``spacing_mm`` ``(sx, sy, sz)`` in mm. A label map of
several classes is scored one class at a time (:func:`compute_class_metrics`: the masks ``labels == k``).

Conventions for empty masks (P = prediction, G = ground truth; sources in ``docs/outputs.md``):

| metric | P, G both empty | P empty, G not | G empty, P not |
| --- | --- | --- | --- |
| ``dice`` | NaN | 0.0 | NaN |
| ``hd95`` (mm) | 0.0 | grid diagonal | grid diagonal |
| ``precision`` = TP / \\|P\\| | NaN | NaN | 0.0 |
| ``recall`` = TP / \\|G\\| | NaN | 0.0 | NaN |
| FPV (mL) | 0.0 | 0.0 | volume of P |
| FNV (mL) | NaN | volume of G | NaN |

Dice and FNV are undefined (NaN) without a true lesion, as in the autoPET III/IV organisers'
``evaluation_metrics.py``; the grid diagonal is the largest distance between two voxel centres of the
grid, ``|(shape - 1) * spacing|`` in mm (the worst value HD95 can take on that grid). NaN means
"undefined": summaries average only the cases where a metric is defined.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import cc3d
import numpy as np
import torch
from monai.metrics.utils import get_mask_edges, get_surface_distance

from h2aseg.io import LESION_CONNECTIVITY

__all__ = [
    "CaseMetrics",
    "aggregated_dice",
    "aggregated_dice_of_cases",
    "compute_case_metrics",
    "compute_class_metrics",
    "dice",
    "false_negative_volume_ml",
    "false_positive_volume_ml",
    "grid_diagonal_mm",
    "hd95",
    "precision",
    "recall",
    "voxel_volume_ml",
]


@dataclass(frozen=True)
class CaseMetrics:
    """The metrics of one case (see the module docstring for NaN and empty-mask conventions).

    Attributes:
        dice: foreground Dice in [0, 1]; NaN without a true lesion.
        hd95_mm: 95th-percentile symmetric Hausdorff distance in mm.
        precision: TP / |P| in [0, 1].
        recall: TP / |G| in [0, 1].
        fpv_ml: autoPET false-positive volume in mL.
        fnv_ml: autoPET false-negative volume in mL; NaN without a true lesion.
        intersection_voxels: |P ∩ G|.
        pred_voxels: |P|.
        truth_voxels: |G|.
        voxel_volume_ml: volume of one voxel in mL.
    """

    dice: float
    hd95_mm: float
    precision: float
    recall: float
    fpv_ml: float
    fnv_ml: float
    intersection_voxels: int
    pred_voxels: int
    truth_voxels: int
    voxel_volume_ml: float

    @property
    def has_lesion(self) -> bool:
        """Whether the ground truth has any foreground voxel."""
        return self.truth_voxels > 0

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict of the fields, in declaration order."""
        return asdict(self)


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    """Volume of one voxel in mL (1 mL = 1000 mm³) for spacing ``(sx, sy, sz)`` in mm."""
    return float(np.prod(_check_spacing(spacing_mm))) / 1000.0


def grid_diagonal_mm(shape: Sequence[int], spacing_mm: Sequence[float]) -> float:
    """Largest distance in mm between two voxel centres of a grid of ``shape`` and ``spacing_mm``."""
    extent = (np.asarray(shape, dtype=float) - 1.0) * _check_spacing(spacing_mm)
    return float(np.linalg.norm(extent))


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Dice 2|P ∩ G| / (|P| + |G|); NaN when the ground truth is empty (autoPET III)."""
    pred_mask, truth_mask = _check_pair(pred, truth)
    intersection = int(np.count_nonzero(pred_mask & truth_mask))
    return _case_dice(intersection, int(pred_mask.sum()), int(truth_mask.sum()))


def precision(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / |P|; NaN when the prediction is empty."""
    pred_mask, truth_mask = _check_pair(pred, truth)
    return _ratio(np.count_nonzero(pred_mask & truth_mask), np.count_nonzero(pred_mask))


def recall(pred: np.ndarray, truth: np.ndarray) -> float:
    """TP / |G| (sensitivity); NaN when the ground truth is empty."""
    pred_mask, truth_mask = _check_pair(pred, truth)
    return _ratio(np.count_nonzero(pred_mask & truth_mask), np.count_nonzero(truth_mask))


def hd95(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask surfaces, in mm.

    Surface voxels are the mask minus its 6-connected erosion (voxels on the volume border count as
    surface); for each surface voxel of one mask the Euclidean distance in mm to the nearest surface
    voxel of the other is taken, the 95th percentile (linear interpolation) of each direction is
    computed and the larger one returned. This is MONAI's ``compute_hausdorff_distance(percentile=95,
    spacing=...)`` and medpy's ``hd95(voxelspacing=...)`` (the authors' code calls medpy without a
    spacing, so its HD95 is in voxels, not mm).

    Returns:
        The distance in mm; 0.0 when both masks are empty, :func:`grid_diagonal_mm` when exactly one is.
    """
    pred_mask, truth_mask = _check_pair(pred, truth)
    spacing = _check_spacing(spacing_mm)
    pred_any, truth_any = bool(pred_mask.any()), bool(truth_mask.any())
    if not (pred_any or truth_any):
        return 0.0
    if pred_any != truth_any:
        return grid_diagonal_mm(pred_mask.shape, spacing)
    pred_edges, truth_edges = get_mask_edges(torch.from_numpy(pred_mask), torch.from_numpy(truth_mask))
    directed = (
        get_surface_distance(pred_edges, truth_edges, spacing=spacing.tolist()),
        get_surface_distance(truth_edges, pred_edges, spacing=spacing.tolist()),
    )
    return float(max(np.percentile(np.asarray(d, dtype=np.float64), 95) for d in directed))


def false_positive_volume_ml(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """autoPET false-positive volume: mL of the predicted 18-connected components that touch no true voxel."""
    pred_mask, truth_mask = _check_pair(pred, truth)
    return _untouched_component_voxels(pred_mask, truth_mask) * voxel_volume_ml(spacing_mm)


def false_negative_volume_ml(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """autoPET false-negative volume: mL of the true 18-connected components that touch no predicted voxel;
    NaN when the ground truth is empty (autoPET III)."""
    pred_mask, truth_mask = _check_pair(pred, truth)
    if not truth_mask.any():
        return math.nan
    return _untouched_component_voxels(truth_mask, pred_mask) * voxel_volume_ml(spacing_mm)


def aggregated_dice(cases: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> float:
    """HECKTOR 2022's aggregated Dice 2 Σ V(P ∩ G) / Σ (V(P) + V(G)), volumes V in mm³.

    Args:
        cases: ``(pred, truth, spacing_mm)`` per case; consumed one at a time, so a generator that loads
            cases lazily keeps memory flat.

    Returns:
        The aggregated Dice; NaN when every mask is empty (the organisers' 0 / 0).
    """
    intersection_mm3 = total_mm3 = 0.0
    for pred, truth, spacing_mm in cases:
        pred_mask, truth_mask = _check_pair(pred, truth)
        voxel_mm3 = float(np.prod(_check_spacing(spacing_mm)))
        intersection_mm3 += np.count_nonzero(pred_mask & truth_mask) * voxel_mm3
        total_mm3 += (np.count_nonzero(pred_mask) + np.count_nonzero(truth_mask)) * voxel_mm3
    return _ratio(2.0 * intersection_mm3, total_mm3)


def aggregated_dice_of_cases(cases: Iterable[CaseMetrics]) -> float:
    """:func:`aggregated_dice` from the voxel counts and voxel volumes kept in :class:`CaseMetrics`."""
    intersection_ml = total_ml = 0.0
    for case in cases:
        intersection_ml += case.intersection_voxels * case.voxel_volume_ml
        total_ml += (case.pred_voxels + case.truth_voxels) * case.voxel_volume_ml
    return _ratio(2.0 * intersection_ml, total_ml)


def compute_case_metrics(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float]) -> CaseMetrics:
    """All metrics of one case.

    Args:
        pred: predicted mask ``(X, Y, Z)``.
        truth: ground-truth mask ``(X, Y, Z)`` on the same grid.
        spacing_mm: voxel spacing ``(sx, sy, sz)`` in mm.
    """
    pred_mask, truth_mask = _check_pair(pred, truth)
    intersection = int(np.count_nonzero(pred_mask & truth_mask))
    pred_voxels, truth_voxels = int(pred_mask.sum()), int(truth_mask.sum())
    return CaseMetrics(
        dice=_case_dice(intersection, pred_voxels, truth_voxels),
        hd95_mm=hd95(pred_mask, truth_mask, spacing_mm),
        precision=_ratio(intersection, pred_voxels),
        recall=_ratio(intersection, truth_voxels),
        fpv_ml=false_positive_volume_ml(pred_mask, truth_mask, spacing_mm),
        fnv_ml=false_negative_volume_ml(pred_mask, truth_mask, spacing_mm),
        intersection_voxels=intersection,
        pred_voxels=pred_voxels,
        truth_voxels=truth_voxels,
        voxel_volume_ml=voxel_volume_ml(spacing_mm),
    )


def compute_class_metrics(
    pred_labels: np.ndarray, truth_labels: np.ndarray, spacing_mm: Sequence[float], labels: Sequence[int]
) -> dict[int, CaseMetrics]:
    """:func:`compute_case_metrics` of each class ``k`` in ``labels`` on the masks ``labels == k``.

    Args:
        pred_labels: predicted label map ``(X, Y, Z)`` of integer classes (0 = background).
        truth_labels: ground-truth label map ``(X, Y, Z)`` on the same grid.
        spacing_mm: voxel spacing ``(sx, sy, sz)`` in mm.
        labels: the foreground classes to score.

    Returns:
        The metrics of each class, by label. A primary tumour predicted as a node counts as a miss of
        class 1 and a false positive of class 2.
    """
    pred_array, truth_array = np.asarray(pred_labels), np.asarray(truth_labels)
    _check_pair(pred_array, truth_array)
    return {
        int(label): compute_case_metrics(pred_array == label, truth_array == label, spacing_mm)
        for label in labels
    }


def _case_dice(intersection: int, pred_voxels: int, truth_voxels: int) -> float:
    return math.nan if truth_voxels == 0 else 2.0 * intersection / (pred_voxels + truth_voxels)


def _ratio(numerator: float, denominator: float) -> float:
    return math.nan if denominator == 0 else float(numerator) / float(denominator)


def _untouched_component_voxels(mask: np.ndarray, other: np.ndarray) -> int:
    """Voxels of the 18-connected components of ``mask`` that share no voxel with ``other``."""
    labels, n_components = cc3d.connected_components(
        mask, connectivity=LESION_CONNECTIVITY, return_N=True, out_dtype=np.uint32
    )
    if n_components == 0:
        return 0
    touched = np.zeros(n_components + 1, dtype=bool)
    touched[labels[other]] = True
    sizes = np.bincount(labels.ravel(), minlength=n_components + 1)
    return int(sizes[1:][~touched[1:]].sum())


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binarise both masks (``> 0``) and check they are 3-D arrays of one shape."""
    pred_array, truth_array = np.asarray(pred), np.asarray(truth)
    if pred_array.ndim != 3 or pred_array.shape != truth_array.shape:
        raise ValueError(
            f"masks must be 3-D arrays of one shape, got prediction {pred_array.shape} "
            f"and ground truth {truth_array.shape}"
        )
    return _binary(pred_array), _binary(truth_array)


def _binary(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask if mask.dtype == bool else mask > 0)


def _check_spacing(spacing_mm: Sequence[float]) -> np.ndarray:
    spacing = np.asarray(spacing_mm, dtype=float)
    if spacing.shape != (3,) or not np.isfinite(spacing).all() or (spacing <= 0).any():
        raise ValueError(f"spacing_mm must be 3 positive finite numbers (mm), got {spacing_mm!r}")
    return spacing
