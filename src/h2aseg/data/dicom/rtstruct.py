"""DICOM RTSTRUCT contours to a binary mask on a reference image grid.

Each closed planar contour (patient LPS mm) is mapped to the continuous voxel index of the
reference grid and filled in its plane; contours on one plane are combined by XOR, so a contour
inside another cuts a hole (even-odd rule). A voxel is inside when its centre is inside. Each
slice of the grid takes the nearest contour plane (nearest-neighbour sampling along the slice axis).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

logger = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
FRAME_OF_REFERENCE_KEY = "0020|0052"
OFF_SLICE_TOLERANCE = 0.25
"""Largest spread (in slices) of one contour's points across the reference's slice axis."""


class RtStructError(ValueError):
    """An RTSTRUCT that cannot be turned into a mask on the given grid."""


def _read_rtstruct(rtstruct_path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(rtstruct_path)
    except (InvalidDicomError, OSError) as error:
        raise RtStructError(f"{rtstruct_path}: not a readable DICOM file ({error})") from error
    if str(ds.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
        raise RtStructError(f"{rtstruct_path}: not an RT Structure Set (SOPClassUID {ds.get('SOPClassUID')})")
    return ds


def roi_names(rtstruct_path: Path) -> list[str]:
    """The ROI names of an RTSTRUCT, in file order."""
    ds = _read_rtstruct(Path(rtstruct_path))
    return [str(item.ROIName) for item in ds.get("StructureSetROISequence") or []]


def _find_roi(ds: Dataset, roi: str, rtstruct_path: Path) -> Dataset:
    items = ds.get("StructureSetROISequence") or []
    for item in items:
        if str(item.ROIName).strip().casefold() == roi.strip().casefold():
            return item
    available = ", ".join(str(item.ROIName) for item in items) or "none"
    raise RtStructError(f"{rtstruct_path}: no ROI named {roi!r}; available: {available}")


def _check_frame_of_reference(roi_item: Dataset, reference: sitk.Image, rtstruct_path: Path) -> None:
    roi_frame = str(roi_item.get("ReferencedFrameOfReferenceUID", "")).strip()
    if not (roi_frame and reference.HasMetaDataKey(FRAME_OF_REFERENCE_KEY)):
        logger.info("%s: FrameOfReferenceUID not checked (not known on both sides)", rtstruct_path)
        return
    image_frame = reference.GetMetaData(FRAME_OF_REFERENCE_KEY).strip()
    if image_frame and image_frame != roi_frame:
        raise RtStructError(
            f"{rtstruct_path}: ROI FrameOfReferenceUID {roi_frame} differs from the image's {image_frame}"
        )


def _closed_contours(ds: Dataset, roi_number: int, rtstruct_path: Path) -> list[np.ndarray]:
    """The CLOSED_PLANAR contours of one ROI, each ``(N, 3)`` LPS mm."""
    for item in ds.get("ROIContourSequence") or []:
        if int(item.ReferencedROINumber) == roi_number:
            contours = item.get("ContourSequence") or []
            closed = [c for c in contours if str(c.get("ContourGeometricType", "")) == "CLOSED_PLANAR"]
            if len(closed) < len(contours):
                ignored = len(contours) - len(closed)
                logger.warning("%s: %d contours that are not CLOSED_PLANAR ignored", rtstruct_path, ignored)
            return [np.asarray(c.ContourData, dtype=float).reshape(-1, 3) for c in closed]
    raise RtStructError(f"{rtstruct_path}: ROI number {roi_number} has no entry in ROIContourSequence")


def physical_to_continuous_index(points_mm: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """Patient LPS points ``(N, 3)`` mm to continuous voxel indices ``(N, 3)`` (x, y, z) of ``reference``."""
    direction = np.asarray(reference.GetDirection(), dtype=float).reshape(3, 3)
    origin = np.asarray(reference.GetOrigin(), dtype=float)
    spacing = np.asarray(reference.GetSpacing(), dtype=float)
    return np.linalg.solve(direction * spacing, (points_mm - origin).T).T


def _fill_polygon(polygon: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Voxel centres inside a polygon ``(N, 2)`` of (x, y) indices, as a ``shape_yx`` boolean slice.

    Hand-written around matplotlib's point-in-polygon test (on the polygon's bounding box only)
    because none of our libraries fills a polygon given in continuous voxel coordinates.
    """
    inside = np.zeros(shape_yx, dtype=bool)
    low = np.maximum(np.ceil(polygon.min(axis=0)).astype(int), 0)
    high = np.minimum(np.floor(polygon.max(axis=0)).astype(int) + 1, (shape_yx[1], shape_yx[0]))
    if np.any(high <= low):
        return inside
    y_index, x_index = np.mgrid[low[1] : high[1], low[0] : high[0]]
    centres = np.column_stack([x_index.ravel(), y_index.ravel()])
    inside[low[1] : high[1], low[0] : high[0]] = (
        PolygonPath(polygon).contains_points(centres).reshape(y_index.shape)
    )
    return inside


def _contour_planes(
    contours_mm: list[np.ndarray], reference: sitk.Image, roi: str, rtstruct_path: Path
) -> dict[float, list[np.ndarray]]:
    """Contours grouped by plane: continuous slice index of the plane -> (x, y) index polygons."""
    planes: dict[float, list[np.ndarray]] = {}
    for points_mm in contours_mm:
        index = physical_to_continuous_index(points_mm, reference)
        if np.ptp(index[:, 2]) > OFF_SLICE_TOLERANCE:
            raise RtStructError(
                f"{rtstruct_path}: a contour of {roi!r} spans {np.ptp(index[:, 2]):.2f} slices of the "
                "reference grid; resample the image so that its slices are parallel to the contours"
            )
        planes.setdefault(round(float(index[:, 2].mean()), 3), []).append(index[:, :2])
    return planes


def rtstruct_to_mask(rtstruct_path: Path, roi: str, reference: sitk.Image) -> sitk.Image:
    """Rasterise one RTSTRUCT ROI onto the grid of ``reference``.

    Contours on one plane are combined by XOR. Each slice of the grid takes the nearest contour
    plane within half the plane spacing (at least half a slice), so contours drawn on another
    grid's slices (CT contours on a PET grid) are sampled, never summed or cancelled.

    Args:
        rtstruct_path: the RTSTRUCT file.
        roi: ROI name (case-insensitive).
        reference: the image whose grid the mask takes; if it carries metadata ``0020|0052``
            (as the readers of :mod:`h2aseg.data.dicom.series` set), the FrameOfReferenceUID is checked.

    Returns:
        uint8 mask (0/1) with the geometry of ``reference``.

    Raises:
        RtStructError: not an RTSTRUCT, unknown ROI (the message lists the ROIs), another frame
            of reference, or a contour not lying in one slice of the reference grid.
    """
    rtstruct_path = Path(rtstruct_path)
    ds = _read_rtstruct(rtstruct_path)
    roi_item = _find_roi(ds, roi, rtstruct_path)
    _check_frame_of_reference(roi_item, reference, rtstruct_path)
    size_x, size_y, size_z = reference.GetSize()
    mask_zyx = np.zeros((size_z, size_y, size_x), dtype=bool)
    planes = _contour_planes(
        _closed_contours(ds, int(roi_item.ROINumber), rtstruct_path), reference, roi, rtstruct_path
    )
    if planes:
        plane_z = np.array(sorted(planes))
        reach = 0.5 * max(1.0, float(np.median(np.diff(plane_z)))) if len(plane_z) > 1 else 0.5
        distance = np.abs(np.arange(size_z)[:, None] - plane_z[None, :])
        nearest = distance.argmin(axis=1)
        filled: dict[int, np.ndarray] = {}
        for slice_index in np.flatnonzero(distance.min(axis=1) <= reach):
            plane = int(nearest[slice_index])
            if plane not in filled:
                polygons = planes[float(plane_z[plane])]
                filled[plane] = np.logical_xor.reduce([_fill_polygon(p, (size_y, size_x)) for p in polygons])
            mask_zyx[slice_index] = filled[plane]
    if not mask_zyx.any():
        logger.warning("%s: ROI %r gives an empty mask on this grid", rtstruct_path, roi)
    mask = sitk.GetImageFromArray(mask_zyx.astype(np.uint8))
    mask.CopyInformation(reference)
    return mask
