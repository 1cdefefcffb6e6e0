"""Case pictures: PET maximum-intensity projections with lesion outlines and numbers, the axial CT.

Arrays are in RAS voxel order ``(X, Y, Z)``: voxel index ``x`` grows towards the patient's
Right, ``y`` towards Anterior, ``z`` towards Superior (NIfTI RAS+). Pictures follow the
radiological convention: head at the top, the patient's right on the left of the image
(coronal and axial), anterior on the left (sagittal), anterior at the top (axial).

Uses ``matplotlib.figure.Figure`` directly (no pyplot state, Agg canvas), so it is safe to call
from any thread or process without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from nibabel import processing as nib_processing
from scipy import ndimage

from h2aseg.io import LESION_CONNECTIVITY, atomic_output

PREDICTION_COLOUR = "#e8112d"
TRUTH_COLOUR = "#1f9e3a"
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)  # level 40 HU, width 400 HU
MARKER_COLOUR = "#1f4e9c"
MAX_NUMBERED_LESIONS = 15  # the largest ones (lowest ids); more numbers would hide the picture


def save_case_figure(
    pet_suv: np.ndarray,
    mask: np.ndarray,
    ct_hu: np.ndarray,
    spacing_mm: Sequence[float],
    out_png: Path,
    title: str | None = None,
    truth: np.ndarray | None = None,
    suv_window: tuple[float, float] = (0.0, 10.0),
    ct_window_hu: tuple[float, float] = SOFT_TISSUE_WINDOW_HU,
    *,
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    ct_spacing_mm: Sequence[float] | None = None,
    ct_origin_mm: Sequence[float] | None = None,
    lesions: Sequence[tuple[int, Sequence[float]]] = (),
) -> None:
    """Coronal and sagittal PET MIPs and the axial CT through the hottest lesion, with outlines.

    Every panel is drawn in patient millimetres (RAS), so the CT may lie on its own, finer grid.

    Args:
        pet_suv: PET in SUV, ``(X, Y, Z)`` in RAS voxel order.
        mask: predicted lesion mask ``(X, Y, Z)`` (non-zero = lesion), same grid.
        ct_hu: CT in HU in RAS voxel order: on the PET grid, or on its own grid when
            ``ct_spacing_mm`` and ``ct_origin_mm`` are given.
        spacing_mm: PET voxel spacing ``(3,)`` in mm.
        out_png: PNG to write (atomically).
        title: figure title.
        truth: optional ground-truth mask ``(X, Y, Z)``, outlined in a second colour.
        suv_window: SUV range of the inverted grey scale of the MIPs (shown on a colour bar).
        ct_window_hu: HU range of the CT slice (soft-tissue window by default).
        origin_mm: RAS position (mm) of the PET voxel ``(0, 0, 0)``'s centre.
        ct_spacing_mm, ct_origin_mm: the CT's own spacing and origin, RAS.
        lesions: ``(lesion_id, centroid_mm)`` pairs (RAS mm) of the lesion report; each id (the
            :data:`MAX_NUMBERED_LESIONS` lowest) is written beside the outline of the mask's
            connected component nearest its centroid.
    """
    pet_suv = np.asarray(pet_suv, dtype=np.float32)
    pet_grid = _Grid(pet_suv.shape, spacing_mm, origin_mm)
    own_ct = ct_spacing_mm is not None and ct_origin_mm is not None
    ct_hu = np.asarray(ct_hu)
    ct_grid = _Grid(ct_hu.shape, ct_spacing_mm, ct_origin_mm) if own_ct else pet_grid
    label_masks = {} if truth is None else {"truth": _classes(truth)}
    label_masks["prediction"] = _classes(mask)  # drawn last, on top of the truth
    masks = {name: labels != 0 for name, labels in label_masks.items()}
    checks = (*masks.items(), *(() if own_ct else (("CT", ct_hu),)))
    for name, array in checks:
        if array.shape != pet_suv.shape:
            raise ValueError(f"{out_png}: {name} shape {array.shape} differs from PET shape {pet_suv.shape}")
    colours = {"prediction": PREDICTION_COLOUR, "truth": TRUTH_COLOUR}
    slice_z = _hottest_slice(pet_suv, masks["prediction"])
    z_mm = pet_grid.centres(2)[slice_z]
    ct_z = int(np.argmin(np.abs(ct_grid.centres(2) - z_mm)))

    widths = _panel_widths(pet_suv.shape, pet_grid.spacing)
    figure = Figure(figsize=(float(np.clip(7.0 * sum(widths) + 2.0, 9.0, 17.0)), 8.0), layout="constrained")
    coronal, sagittal, axial = figure.subplots(1, 3, width_ratios=widths)
    mip = _show(coronal, pet_suv.max(axis=1), pet_grid, (0, 2), "gray_r", suv_window, "Coronal PET MIP")
    _show(sagittal, pet_suv.max(axis=0), pet_grid, (1, 2), "gray_r", suv_window, "Sagittal PET MIP")
    level, width = (ct_window_hu[0] + ct_window_hu[1]) / 2, ct_window_hu[1] - ct_window_hu[0]
    axial_title = f"Axial CT at z = {z_mm:.1f} mm (W {width:.0f} / L {level:.0f} HU)"
    _show(axial, ct_hu[:, :, ct_z], ct_grid, (0, 1), "gray", ct_window_hu, axial_title)
    for name, lesion_mask in masks.items():
        _outline(coronal, lesion_mask.any(axis=1), pet_grid, (0, 2), colours[name])
        _outline(sagittal, lesion_mask.any(axis=0), pet_grid, (1, 2), colours[name])
        _outline(axial, lesion_mask[:, :, slice_z], pet_grid, (0, 1), colours[name])
    coronal.axhline(z_mm, color=MARKER_COLOUR, linestyle="--", linewidth=1.0)
    sagittal.axhline(z_mm, color=MARKER_COLOUR, linestyle="--", linewidth=1.0)
    _number_lesions((coronal, sagittal, axial), label_masks["prediction"], pet_grid, lesions, slice_z)
    _label_directions(coronal, ("R", "L", "H", "F"))
    _label_directions(sagittal, ("A", "P", "H", "F"))
    _label_directions(axial, ("R", "L", "A", "P"))
    colour_bar = figure.colorbar(mip, ax=[coronal, sagittal], location="left", shrink=0.7, pad=0.02)
    colour_bar.set_label(f"SUV (g/mL), window {suv_window[0]:g}-{suv_window[1]:g}", fontsize=11)
    handles = [
        Line2D([], [], color=colours[name], label=_legend_text(name, labels, pet_grid.spacing))
        for name, labels in reversed(label_masks.items())
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=11)
    if title:
        figure.suptitle(title, fontsize=13)
    _save_atomic(figure, Path(out_png))


def save_nifti_case_figure(
    pet_image: nib.Nifti1Image,
    mask: np.ndarray,
    ct_image: nib.Nifti1Image,
    out_png: Path,
    title: str | None = None,
    truth: np.ndarray | None = None,
    lesions: Sequence[tuple[int, Sequence[float]]] = (),
) -> None:
    """:func:`save_case_figure` for images as stored: any orientation, CT on its own grid.

    Reorients the PET grid to RAS. The CT keeps its own grid and resolution when its axes are
    those of the reoriented PET (no rotation between them); otherwise it is resampled onto the
    PET grid (trilinear, edge values extended beyond the CT's last voxel centres).

    Args:
        pet_image: the PET NIfTI in SUV (its grid is the picture's grid).
        mask: predicted mask in the PET file's voxel order, ``pet_image.shape``.
        ct_image: the CT NIfTI in HU, on any grid overlapping the PET.
        out_png, title: as in :func:`save_case_figure`.
        truth: optional ground-truth mask in the PET file's voxel order.
        lesions: as in :func:`save_case_figure` (RAS mm centroids of the lesion report).
    """
    pet_suv = np.asarray(pet_image.dataobj, dtype=np.float32)
    orientation = nib.orientations.io_orientation(pet_image.affine)
    spacing, origin, pet_aligned = _ras_grid(pet_image.affine, pet_suv.shape)
    ct_spacing, ct_origin, ct_aligned = _ras_grid(ct_image.affine, ct_image.shape[:3])
    ct_own = {}
    if pet_aligned and ct_aligned:
        ct_orientation = nib.orientations.io_orientation(ct_image.affine)
        ct_hu = nib.orientations.apply_orientation(np.asarray(ct_image.dataobj, np.float32), ct_orientation)
        ct_own = {"ct_spacing_mm": ct_spacing, "ct_origin_mm": ct_origin}
    else:
        grid = (pet_suv.shape, pet_image.affine)
        ct_hu = nib_processing.resample_from_to(ct_image, grid, order=1, mode="nearest").get_fdata(
            dtype=np.float32
        )
        ct_hu = nib.orientations.apply_orientation(ct_hu, orientation)

    def to_ras(array: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(np.asarray(array), orientation)

    save_case_figure(
        to_ras(pet_suv),
        to_ras(mask),
        ct_hu,
        spacing,
        out_png,
        title=title,
        truth=None if truth is None else to_ras(truth),
        origin_mm=origin,
        lesions=lesions,
        **ct_own,
    )


def _hottest_slice(pet_suv: np.ndarray, lesion_mask: np.ndarray) -> int:
    """Axial index ``z`` of the hottest lesion voxel (of the hottest voxel if no lesion)."""
    candidates = np.where(lesion_mask, pet_suv, -np.inf) if lesion_mask.any() else pet_suv
    return int(np.unravel_index(np.argmax(candidates), pet_suv.shape)[2])


def _panel_widths(shape: Sequence[int], spacing: np.ndarray) -> list[float]:
    """Relative widths of the coronal, sagittal and axial panels, all drawn at one height.

    The MIPs get their width/height ratio in mm; the axial slice, whose height is the body's
    depth rather than its length, gets three quarters of its own ratio so it does not dominate.
    """
    extent_mm = np.asarray(shape) * spacing
    return [
        extent_mm[0] / extent_mm[2],
        extent_mm[1] / extent_mm[2],
        0.75 * extent_mm[0] / extent_mm[1],
    ]


class _Grid:
    """An axis-aligned RAS grid: voxel ``i`` of axis ``a`` lies at ``origin[a] + i * spacing[a]`` mm."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float] | None, origin: Sequence[float] | None):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.origin = np.asarray(origin, dtype=np.float64)

    def centres(self, axis: int) -> np.ndarray:
        return self.origin[axis] + np.arange(self.shape[axis]) * self.spacing[axis]

    def display_extent(self, axes: tuple[int, int]) -> tuple[float, float, float, float]:
        """``imshow`` extent of an ``(a, b)`` plane shown by :func:`_to_display`: a reversed, b up."""
        (a_low, a_high), (b_low, b_high) = (self._edges(axis) for axis in axes)
        return a_high, a_low, b_low, b_high

    def _edges(self, axis: int) -> tuple[float, float]:
        centres = self.centres(axis)
        half = self.spacing[axis] / 2
        return float(centres.min() - half), float(centres.max() + half)


def _ras_grid(affine: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(spacing, origin, axis_aligned)`` of the grid reoriented to RAS; spacing and origin are
    approximate (the columns' lengths) when its axes are oblique (``axis_aligned`` False)."""
    orientation = nib.orientations.io_orientation(affine)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(orientation, shape)
    rotation = ras_affine[:3, :3]
    aligned = np.allclose(rotation, np.diag(np.diag(rotation)), atol=1e-4 * np.abs(rotation).max())
    return np.linalg.norm(rotation, axis=0), ras_affine[:3, 3].copy(), bool(aligned)


def _to_display(plane: np.ndarray) -> np.ndarray:
    """Turn an ``(a, b)`` plane of RAS axes into image rows/columns.

    Rows run along ``b`` reversed (superior or anterior at the top), columns along ``a``
    reversed (the patient's right, or anterior, on the left).
    """
    return np.flip(plane, axis=(0, 1)).T


def _show(
    axes: Axes,
    plane: np.ndarray,
    grid: _Grid,
    plane_axes: tuple[int, int],
    cmap: str,
    window: tuple[float, float],
    title: str,
) -> AxesImage:
    """Draw an ``(a, b)`` plane in mm (equal aspect), radiological orientation."""
    image = axes.imshow(
        _to_display(plane),
        cmap=cmap,
        vmin=window[0],
        vmax=window[1],
        interpolation="nearest",
        extent=grid.display_extent(plane_axes),
    )
    axes.set_aspect("equal")
    axes.set_title(title, fontsize=11)
    axes.set_xticks([])
    axes.set_yticks([])
    return image


def _outline(axes: Axes, region: np.ndarray, grid: _Grid, plane_axes: tuple[int, int], colour: str) -> None:
    """Contour of a 2-D boolean ``(a, b)`` region at its voxel centres in mm (nothing if empty)."""
    if region.any():
        limits = axes.get_xlim(), axes.get_ylim()
        a_mm, b_mm = (grid.centres(axis) for axis in plane_axes)
        axes.contour(a_mm, b_mm, region.T.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.2)
        axes.set_xlim(*limits[0])
        axes.set_ylim(*limits[1])


def _number_lesions(
    panels: tuple[Axes, Axes, Axes],
    mask: np.ndarray,
    grid: _Grid,
    lesions: Sequence[tuple[int, Sequence[float]]],
    slice_z: int,
) -> None:
    """Write each lesion's id beside its component's outline on the MIPs (and the axial slice).

    Components as in the lesion report: 18-connected within one class of the label mask.
    """
    if not lesions or not mask.any():
        return
    components, count = cc3d.connected_components(mask, connectivity=LESION_CONNECTIVITY, return_N=True)
    boxes = ndimage.find_objects(components)
    centroids = np.asarray(ndimage.center_of_mass(mask != 0, components, range(1, count + 1))).reshape(
        count, 3
    )
    centroids_mm = grid.origin + centroids * grid.spacing
    coronal, sagittal, axial = panels
    for lesion_id, centroid_mm in sorted(lesions, key=lambda lesion: lesion[0])[:MAX_NUMBERED_LESIONS]:
        index = int(np.argmin(np.linalg.norm(centroids_mm - np.asarray(centroid_mm), axis=1)))
        box, centre = boxes[index], centroids_mm[index]
        # Beside the outline on the display's right: the low-index edge of the reversed a axis.
        low = grid.origin + np.array([part.start for part in box]) * grid.spacing - grid.spacing
        for axes, (a, b) in ((coronal, (0, 2)), (sagittal, (1, 2))):
            _lesion_label(axes, lesion_id, low[a], centre[b])
        if box[2].start <= slice_z < box[2].stop and (components[:, :, slice_z] == index + 1).any():
            _lesion_label(axial, lesion_id, low[0], centre[1])


def _lesion_label(axes: Axes, lesion_id: int, a_mm: float, b_mm: float) -> None:
    axes.text(
        a_mm,
        b_mm,
        str(lesion_id),
        color=PREDICTION_COLOUR,
        fontsize=12,
        fontweight="bold",
        ha="left",
        va="center",
        path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")],
        clip_on=True,
    )


def _label_directions(axes: Axes, letters: tuple[str, str, str, str]) -> None:
    """Write the anatomical directions at the left, right, top and bottom edges of a panel."""
    style = {
        "transform": axes.transAxes,
        "color": MARKER_COLOUR,
        "fontsize": 15,
        "fontweight": "bold",
        "bbox": {"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.7, "edgecolor": "none"},
    }
    left, right, top, bottom = letters
    axes.text(0.02, 0.5, left, ha="left", va="center", **style)
    axes.text(0.98, 0.5, right, ha="right", va="center", **style)
    axes.text(0.5, 0.98, top, ha="center", va="top", **style)
    axes.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _classes(mask: np.ndarray) -> np.ndarray:
    """A mask as integer classes (bool → uint8 0/1), for per-class components."""
    mask = np.asarray(mask)
    return mask.astype(np.uint8) if mask.dtype == bool else mask.astype(np.int64, copy=False)


def _legend_text(name: str, labels: np.ndarray, spacing: np.ndarray) -> str:
    """``"prediction: 3 lesions, MTV 12.4 mL"``, lesions counted like the report (18-connected
    within each class)."""
    _, count = cc3d.connected_components(labels, connectivity=LESION_CONNECTIVITY, return_N=True)
    mtv_ml = float((labels != 0).sum()) * float(np.prod(spacing)) / 1000.0
    return f"{name}: {count} lesion{'s' if count != 1 else ''}, MTV {mtv_ml:.1f} mL"


def _save_atomic(figure: Figure, out_png: Path) -> None:
    """Render ``figure`` as PNG under a temporary name beside ``out_png``, then rename it."""
    with atomic_output(out_png) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
