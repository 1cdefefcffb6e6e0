"""Pictures: PET maximum-intensity projections with lesion outlines, and training curves.

Arrays are in RAS voxel order ``(X, Y, Z)``: voxel index ``x`` grows towards the patient's
Right, ``y`` towards Anterior, ``z`` towards Superior (NIfTI RAS+). Pictures follow the
radiological convention: head at the top, the patient's right on the left of the image
(coronal and axial), anterior on the left (sagittal), anterior at the top (axial).

Uses ``matplotlib.figure.Figure`` directly (no pyplot state, Agg canvas), so it is safe to call
from any thread or process without a display.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from nibabel import processing as nib_processing

from h2aseg.io import LESION_CONNECTIVITY, atomic_output

PREDICTION_COLOUR = "#e8112d"
TRUTH_COLOUR = "#1f9e3a"
SOFT_TISSUE_WINDOW_HU = (-160.0, 240.0)  # level 40 HU, width 400 HU


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
) -> None:
    """Coronal and sagittal PET MIPs and the axial CT through the hottest lesion, with outlines.

    Args:
        pet_suv: PET in SUV, ``(X, Y, Z)`` in RAS voxel order.
        mask: predicted lesion mask ``(X, Y, Z)`` (non-zero = lesion), same grid.
        ct_hu: CT in HU on the same grid.
        spacing_mm: voxel spacing ``(3,)`` in mm (sets each panel's aspect ratio).
        out_png: PNG to write (atomically).
        title: figure title.
        truth: optional ground-truth mask ``(X, Y, Z)``, outlined in a second colour.
        suv_window: SUV range of the inverted grey scale of the MIPs.
        ct_window_hu: HU range of the CT slice (soft-tissue window by default).
    """
    pet_suv = np.asarray(pet_suv, dtype=np.float32)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    masks = {} if truth is None else {"truth": np.asarray(truth) != 0}
    masks["prediction"] = np.asarray(mask) != 0  # drawn last, on top of the truth
    for name, array in (*masks.items(), ("CT", np.asarray(ct_hu))):
        if array.shape != pet_suv.shape:
            raise ValueError(f"{out_png}: {name} shape {array.shape} differs from PET shape {pet_suv.shape}")
    colours = {"prediction": PREDICTION_COLOUR, "truth": TRUTH_COLOUR}
    slice_z = _hottest_slice(pet_suv, masks["prediction"])
    sx, sy, sz = spacing

    widths = _panel_widths(pet_suv.shape, spacing)
    figure = Figure(figsize=(float(np.clip(7.0 * sum(widths) + 1.0, 8.0, 16.0)), 7.5), layout="constrained")
    coronal, sagittal, axial = figure.subplots(1, 3, width_ratios=widths)
    _show(coronal, pet_suv.max(axis=1), sz / sx, "gray_r", suv_window, "Coronal PET MIP")
    _show(sagittal, pet_suv.max(axis=0), sz / sy, "gray_r", suv_window, "Sagittal PET MIP")
    _show(
        axial, np.asarray(ct_hu)[:, :, slice_z], sy / sx, "gray", ct_window_hu, f"Axial CT, slice {slice_z}"
    )
    for name, lesion_mask in masks.items():
        _outline(coronal, lesion_mask.any(axis=1), colours[name])
        _outline(sagittal, lesion_mask.any(axis=0), colours[name])
        _outline(axial, lesion_mask[:, :, slice_z], colours[name])
    coronal.axhline(pet_suv.shape[2] - 1 - slice_z, color="#3b7dd8", linestyle="--", linewidth=0.8)
    _label_directions(coronal, ("R", "L"))
    _label_directions(sagittal, ("A", "P"))
    _label_directions(axial, ("R", "L"))
    handles = [
        Line2D([], [], color=colours[name], label=_legend_text(name, lesion_mask, spacing))
        for name, lesion_mask in reversed(masks.items())
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    if title:
        figure.suptitle(title)
    _save_atomic(figure, Path(out_png))


def save_nifti_case_figure(
    pet_image: nib.Nifti1Image,
    mask: np.ndarray,
    ct_image: nib.Nifti1Image,
    out_png: Path,
    title: str | None = None,
    truth: np.ndarray | None = None,
) -> None:
    """:func:`save_case_figure` for images as stored: any orientation, CT on its own grid.

    Reorients the PET grid to RAS and resamples the CT onto it unless it is already there
    (trilinear, edge values extended beyond the CT's last voxel centres).

    Args:
        pet_image: the PET NIfTI in SUV (its grid is the picture's grid).
        mask: predicted mask in the PET file's voxel order, ``pet_image.shape``.
        ct_image: the CT NIfTI in HU, on any grid overlapping the PET.
        out_png, title: as in :func:`save_case_figure`.
        truth: optional ground-truth mask in the PET file's voxel order.
    """
    pet_suv = np.asarray(pet_image.dataobj, dtype=np.float32)
    if ct_image.shape == pet_suv.shape and np.allclose(ct_image.affine, pet_image.affine, atol=1e-4):
        ct_hu = np.asarray(ct_image.dataobj, dtype=np.float32)  # already on the PET grid (AutoPET CTres)
    else:
        grid = (pet_suv.shape, pet_image.affine)
        ct_hu = nib_processing.resample_from_to(ct_image, grid, order=1, mode="nearest").get_fdata(
            dtype=np.float32
        )
    orientation = nib.orientations.io_orientation(pet_image.affine)
    spacing_ras = np.empty(3)
    spacing_ras[orientation[:, 0].astype(int)] = np.linalg.norm(pet_image.affine[:3, :3], axis=0)

    def to_ras(array: np.ndarray) -> np.ndarray:
        return nib.orientations.apply_orientation(np.asarray(array), orientation)

    save_case_figure(
        to_ras(pet_suv),
        to_ras(mask),
        to_ras(ct_hu),
        spacing_ras,
        out_png,
        title=title,
        truth=None if truth is None else to_ras(truth),
    )


def save_training_curves(metrics_csv: Path, out_png: Path) -> None:
    """Plot the losses and the validation Dice of a Lightning ``CSVLogger`` ``metrics.csv``.

    Every column whose name contains ``loss`` goes on the left panel and every column containing
    ``dice`` on the right, against ``step`` (or ``epoch``, or the row number). Rows are sparse
    (Lightning writes training and validation values on separate rows); empty cells are skipped.

    Args:
        metrics_csv: the CSV written by Lightning's ``CSVLogger``.
        out_png: PNG to write (atomically).
    """
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        raise ValueError(f"{metrics_csv}: no such metrics file")
    with metrics_csv.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    columns = list(rows[0]) if rows else []
    loss_columns = [column for column in columns if "loss" in column.lower()]
    dice_columns = [column for column in columns if "dice" in column.lower()]
    if not loss_columns and not dice_columns:
        raise ValueError(f"{metrics_csv}: no loss or Dice column to plot")
    x_name = next((name for name in ("step", "epoch") if name in columns), None)

    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, dice_axes = figure.subplots(1, 2)
    panels = ((loss_axes, loss_columns, "loss"), (dice_axes, dice_columns, "Dice"))
    for axes, names, ylabel in panels:
        axes.set_title(ylabel.capitalize(), fontsize=10)
        for name in names:
            x, y = _column_points(rows, x_name, name)
            axes.plot(x, y, marker="." if len(x) < 50 else None, label=name)
        axes.set_xlabel(x_name or "row")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
        if names:
            axes.legend()
    dice_axes.set_ylim(0.0, 1.0)
    _save_atomic(figure, Path(out_png))


def _column_points(rows: list[dict[str, str]], x_name: str | None, y_name: str) -> tuple[list, list]:
    """The (x, y) pairs of the rows where ``y_name`` (and ``x_name``) are filled in."""
    points = [
        (float(row[x_name]) if x_name else index, float(row[y_name]))
        for index, row in enumerate(rows)
        if row.get(y_name) not in (None, "") and (x_name is None or row.get(x_name) not in (None, ""))
    ]
    return [x for x, _ in points], [y for _, y in points]


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


def _to_display(plane: np.ndarray) -> np.ndarray:
    """Turn an ``(a, b)`` plane of RAS axes into image rows/columns.

    Rows run along ``b`` reversed (superior or anterior at the top), columns along ``a``
    reversed (the patient's right, or anterior, on the left).
    """
    return np.flip(plane, axis=(0, 1)).T


def _show(
    axes: Axes,
    plane: np.ndarray,
    aspect: float,
    cmap: str,
    window: tuple[float, float],
    title: str,
) -> None:
    axes.imshow(_to_display(plane), cmap=cmap, vmin=window[0], vmax=window[1], interpolation="nearest")
    axes.set_aspect(aspect)
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])


def _outline(axes: Axes, region: np.ndarray, colour: str) -> None:
    """Contour of a 2-D boolean region (nothing for an empty one)."""
    if region.any():
        axes.contour(_to_display(region).astype(np.float32), levels=[0.5], colors=colour, linewidths=1.0)


def _label_directions(axes: Axes, left_right: tuple[str, str]) -> None:
    """Write the anatomical direction at the left and right edges of a panel."""
    style = {"transform": axes.transAxes, "color": "#3b7dd8", "fontsize": 9, "va": "top"}
    axes.text(0.01, 0.99, left_right[0], ha="left", **style)
    axes.text(0.99, 0.99, left_right[1], ha="right", **style)


def _legend_text(name: str, lesion_mask: np.ndarray, spacing: np.ndarray) -> str:
    """``"prediction: 3 lesions, MTV 12.4 mL"``, lesions counted 18-connected like the report."""
    _, count = cc3d.connected_components(lesion_mask, connectivity=LESION_CONNECTIVITY, return_N=True)
    mtv_ml = float(lesion_mask.sum()) * float(np.prod(spacing)) / 1000.0
    return f"{name}: {count} lesion{'s' if count != 1 else ''}, MTV {mtv_ml:.1f} mL"


def _save_atomic(figure: Figure, out_png: Path) -> None:
    """Render ``figure`` as PNG under a temporary name beside ``out_png``, then rename it."""
    with atomic_output(out_png) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
