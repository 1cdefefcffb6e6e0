"""Lesion quantification: one row per connected lesion with volume and SUV statistics.

Definitions (also in ``docs/outputs.md``):

- A lesion is an 18-connected component of one class of the mask (voxels of one label sharing a
  face or an edge, not only a corner), the way the autoPET evaluation counts lesions; touching
  voxels of two classes (HECKTOR GTVp = 1, GTVn = 2) are two lesions.
- ``volume_ml`` = voxel count × voxel volume, the voxel volume being ``|det(affine[:3, :3])|``
  mm³ / 1000.
- ``suv_max`` / ``suv_mean``: maximum / mean SUV over the lesion's voxels.
- ``suv_peak``: the largest mean SUV in a sphere of radius 6.2 mm (about 1 mL) centred on a
  voxel of the lesion. The sphere is the set of voxels whose centres lie within 6.2 mm of the
  centre voxel's centre (from the spacing), uniformly weighted; the sphere may reach outside
  the lesion, and at the image border only the voxels inside the image are averaged.
- ``tlg`` (total lesion glycolysis) = ``suv_mean × volume_ml``.
- ``centroid_mm``: the mean voxel position mapped through the affine (RAS patient mm).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage, signal

from h2aseg.io import LESION_CONNECTIVITY, atomic_output

SUV_PEAK_RADIUS_MM = 6.2
CSV_COLUMNS = (
    "case_id",
    "lesion_id",
    "class_label",
    "n_voxels",
    "volume_ml",
    "suv_max",
    "suv_mean",
    "suv_peak",
    "tlg",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
)


@dataclass(frozen=True)
class Lesion:
    """Statistics of one connected lesion.

    Attributes:
        lesion_id: 1-based rank by volume over all classes (largest first; ties in scan order).
        class_label: the mask value (class) of the lesion, e.g. 1 = GTVp, 2 = GTVn.
        n_voxels: voxel count.
        volume_ml: metabolic tumour volume of the lesion in mL.
        suv_max: maximum SUV (g/mL) in the lesion.
        suv_mean: mean SUV in the lesion.
        suv_peak: largest 1 mL-sphere mean SUV centred in the lesion (see module docstring).
        tlg: total lesion glycolysis, ``suv_mean × volume_ml`` (g).
        centroid_mm: centre of the lesion in RAS patient coordinates (mm).
    """

    lesion_id: int
    class_label: int
    n_voxels: int
    volume_ml: float
    suv_max: float
    suv_mean: float
    suv_peak: float
    tlg: float
    centroid_mm: tuple[float, float, float]


def voxel_spacing_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing ``(3,)`` in mm: the lengths of the affine's first three columns."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def sphere_kernel(spacing_mm: Sequence[float], radius_mm: float = SUV_PEAK_RADIUS_MM) -> np.ndarray:
    """Binary spherical neighbourhood on a voxel grid.

    Args:
        spacing_mm: voxel spacing ``(3,)`` in mm.
        radius_mm: sphere radius in mm.

    Returns:
        float64 array of odd shape ``(2a+1, 2b+1, 2c+1)``: 1 where the voxel centre lies within
        ``radius_mm`` of the central voxel's centre, else 0.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    half_widths = np.floor(radius_mm / spacing).astype(int)
    offsets_mm = [np.arange(-n, n + 1) * s for n, s in zip(half_widths, spacing, strict=True)]
    dx, dy, dz = np.meshgrid(*offsets_mm, indexing="ij")
    return (dx**2 + dy**2 + dz**2 <= radius_mm**2 + 1e-9).astype(np.float64)


def lesion_table(mask: np.ndarray, pet_suv: np.ndarray, affine: np.ndarray) -> list[Lesion]:
    """Quantify every 18-connected lesion of a mask on the PET grid.

    Args:
        mask: lesion mask ``(X, Y, Z)``: bool, or integer classes (0 = background; each class's
            components are its lesions).
        pet_suv: PET in SUV (g/mL), ``(X, Y, Z)``, same grid as ``mask``.
        affine: ``(4, 4)`` voxel-to-RAS-mm affine of that grid.

    Returns:
        One :class:`Lesion` per component, largest first; empty for an empty mask.
    """
    mask = np.asarray(mask)
    pet_suv = np.asarray(pet_suv, dtype=np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    if mask.ndim != 3 or mask.shape != pet_suv.shape:
        raise ValueError(f"mask {mask.shape} and PET {pet_suv.shape} must be 3-D arrays of the same shape")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be bool or integer classes, got dtype {mask.dtype}")
    classes = mask.astype(np.uint8) if mask.dtype == bool else mask
    labels, n_lesions = cc3d.connected_components(
        classes, connectivity=LESION_CONNECTIVITY, return_N=True, out_dtype=np.uint32
    )
    if n_lesions == 0:
        return []
    stats = cc3d.statistics(labels)
    label_ids = np.arange(1, n_lesions + 1)
    n_voxels = stats["voxel_counts"][1:].astype(np.int64)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    suv_sums = np.bincount(labels.ravel(), weights=pet_suv.ravel(), minlength=n_lesions + 1)[1:]
    suv_mean = suv_sums / n_voxels
    suv_max = np.asarray(ndimage.maximum(pet_suv, labels, label_ids), dtype=np.float64)
    kernel = sphere_kernel(voxel_spacing_mm(affine))
    suv_peak = [
        _peak_in_box(pet_suv, labels, label, box, kernel)
        for label, box in zip(label_ids, stats["bounding_boxes"][1:], strict=True)
    ]
    centroids_mm = stats["centroids"][1:] @ affine[:3, :3].T + affine[:3, 3]
    class_of = np.zeros(n_lesions + 1, dtype=np.int64)
    class_of[labels.ravel()] = classes.ravel()
    order = np.lexsort((label_ids, -n_voxels))
    return [
        Lesion(
            lesion_id=rank + 1,
            class_label=int(class_of[i + 1]),
            n_voxels=int(n_voxels[i]),
            volume_ml=float(n_voxels[i] * voxel_ml),
            suv_max=float(suv_max[i]),
            suv_mean=float(suv_mean[i]),
            suv_peak=float(suv_peak[i]),
            tlg=float(suv_mean[i] * n_voxels[i] * voxel_ml),
            centroid_mm=(float(centroids_mm[i, 0]), float(centroids_mm[i, 1]), float(centroids_mm[i, 2])),
        )
        for rank, i in enumerate(order)
    ]


def _peak_in_box(
    pet_suv: np.ndarray,
    labels: np.ndarray,
    label: int,
    box: tuple[slice, slice, slice],
    kernel: np.ndarray,
) -> float:
    """SUVpeak of one lesion: local sphere means over its bounding box (grown by the kernel).

    The local mean is a normalised convolution (sum of SUV over the in-image part of the sphere
    divided by its voxel count), evaluated for every voxel of the box at once.
    """
    half = np.array(kernel.shape) // 2
    lower = [max(s.start - h, 0) for s, h in zip(box, half, strict=True)]
    upper = [min(s.stop + h, n) for s, h, n in zip(box, half, pet_suv.shape, strict=True)]
    grown = tuple(slice(lo, hi) for lo, hi in zip(lower, upper, strict=True))
    pet_crop = pet_suv[grown]
    sphere_sums = signal.convolve(pet_crop, kernel, mode="same")
    sphere_counts = signal.convolve(np.ones_like(pet_crop), kernel, mode="same")
    local_mean = sphere_sums / sphere_counts
    return float(local_mean[labels[grown] == label].max())


def case_summary(lesions: Sequence[Lesion], classes: Mapping[int, str] | None = None) -> dict:
    """Case totals of a lesion table, over all classes and per class.

    Args:
        lesions: output of :func:`lesion_table`.
        classes: label → name of the model's classes (background 0 skipped); default: the classes of
            the lesions, named ``label{k}``.

    Returns:
        ``{"lesion_count", "total_mtv_ml", "total_tlg", "suv_max", "classes"}``; ``suv_max`` is the
        largest lesion SUVmax, ``None`` without lesions; ``classes`` maps each class name to
        ``{"label", "lesion_count", "mtv_ml", "tlg", "suv_max"}`` of its lesions (zeros and ``None``
        for a class without lesion).
    """
    names = (
        {label: name for label, name in classes.items() if label != 0}
        if classes is not None
        else {label: f"label{label}" for label in sorted({lesion.class_label for lesion in lesions})}
    )
    per_class = {}
    for label, name in names.items():
        own = [lesion for lesion in lesions if lesion.class_label == label]
        per_class[name] = {"label": label, **_totals(own, "mtv_ml", "tlg")}
    return {**_totals(lesions, "total_mtv_ml", "total_tlg"), "classes": per_class}


def _totals(lesions: Sequence[Lesion], mtv_key: str, tlg_key: str) -> dict[str, float | int | None]:
    return {
        "lesion_count": len(lesions),
        mtv_key: float(sum(lesion.volume_ml for lesion in lesions)),
        tlg_key: float(sum(lesion.tlg for lesion in lesions)),
        "suv_max": max((lesion.suv_max for lesion in lesions), default=None),
    }


def write_lesion_report(
    lesions: Sequence[Lesion],
    csv_path: Path,
    json_path: Path,
    case_id: str,
    classes: Mapping[int, str] | None = None,
) -> None:
    """Write the lesion table as CSV and the case summary (with the lesions) as JSON, atomically.

    Args:
        lesions: output of :func:`lesion_table`.
        csv_path: one row per lesion, columns :data:`CSV_COLUMNS` (header written even when empty).
        json_path: ``{"case_id", **case_summary, "suv_peak_radius_mm", "connectivity", "lesions"}``.
        case_id: written into both files.
        classes: label → class name for the per-class totals (see :func:`case_summary`).
    """
    with atomic_output(Path(csv_path)) as temporary, temporary.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for lesion in lesions:
            numbers = (lesion.volume_ml, lesion.suv_max, lesion.suv_mean, lesion.suv_peak, lesion.tlg)
            writer.writerow(
                [case_id, lesion.lesion_id, lesion.class_label, lesion.n_voxels]
                + [f"{value:.6g}" for value in (*numbers, *lesion.centroid_mm)]
            )
    report = {
        "case_id": case_id,
        **case_summary(lesions, classes),
        "suv_peak_radius_mm": SUV_PEAK_RADIUS_MM,
        "connectivity": LESION_CONNECTIVITY,
        "lesions": [asdict(lesion) for lesion in lesions],
    }
    with atomic_output(Path(json_path)) as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")
