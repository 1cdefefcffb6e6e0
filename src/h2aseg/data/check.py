"""Integrity check of a PET/CT dataset before training: one line per problem, naming the file.

Headers are read first (dimensions, grids, physical overlap); voxel data only for the value
checks (corruption, NaN/inf, label values, SUV plausibility).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.progress import track
from rich.table import Table

from h2aseg.data import layouts
from h2aseg.io import overlap_problem

logger = logging.getLogger(__name__)

PET_NEGATIVE_TOLERANCE_SUV = 0.5
"""PET may dip this far below 0 SUV (reconstruction/resampling ringing) before it is reported."""
PET_MAX_PLAUSIBLE_SUV = 100.0
"""A whole-body FDG SUVmax above this is not physiological: wrong units or scaling."""
PET_MIN_ACTIVITY_BQML = 1000.0
"""A PET maximum above this looks like activity concentration in Bq/mL rather than SUV."""
GRID_TOLERANCE_MM = 1e-3
"""Two grids are the same when their affines agree to this many mm."""
MODALITIES = ("ct", "pet", "label")


@dataclass(frozen=True)
class Problem:
    """One defect of a dataset.

    Attributes:
        case_id: the case it belongs to (empty for dataset-level problems).
        file: the file (or folder) at fault.
        message: what is wrong, one line.
    """

    case_id: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def _spatial_shape(header: nib.Nifti1Header) -> tuple[int, ...]:
    """Shape without trailing singleton axes beyond the third (``(X, Y, Z, 1)`` is 3-D)."""
    shape = tuple(int(n) for n in header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _same_grid(first: nib.spatialimages.SpatialImage, second: nib.spatialimages.SpatialImage) -> bool:
    """Same shape and affine (within ``GRID_TOLERANCE_MM``)."""
    return first.shape[:3] == second.shape[:3] and np.allclose(
        first.affine, second.affine, atol=GRID_TOLERANCE_MM
    )


def _check_header(case_id: str, path: Path) -> tuple[nib.spatialimages.SpatialImage | None, list[Problem]]:
    """Opens ``path`` (header only) and checks it is a readable 3-D volume."""
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises many types for a damaged header
        return None, [Problem(case_id, str(path), f"unreadable image file ({error})")]
    shape = _spatial_shape(image.header)
    if len(shape) < 3 or min(shape[:3]) <= 1:
        return None, [Problem(case_id, str(path), f"is 2-D (shape {shape}), expected a 3-D volume")]
    if len(shape) > 3:
        return None, [Problem(case_id, str(path), f"has {len(shape)} dimensions (shape {shape}), expected 3")]
    if abs(np.linalg.det(image.affine[:3, :3])) < 1e-9:
        return None, [Problem(case_id, str(path), "has a degenerate affine (zero voxel size)")]
    return image, []


def _check_geometry(case_id: str, images: dict[str, nib.spatialimages.SpatialImage]) -> list[Problem]:
    """CT/PET physical overlap, label on the PET or the CT grid."""
    problems = []
    ct, pet, label = (images.get(key) for key in MODALITIES)
    if ct is not None and pet is not None:
        problem = overlap_problem(ct, pet)
        if problem is not None:
            message = f"{problem} (PET file {Path(pet.get_filename()).name})"
            problems.append(Problem(case_id, str(ct.get_filename()), message))
    if label is not None:
        grids = [image for image in (pet, ct) if image is not None]
        if grids and not any(_same_grid(label, image) for image in grids):
            spacing = tuple(round(float(s), 3) for s in label.header.get_zooms()[:3])
            message = f"label grid (shape {label.shape[:3]}, spacing {spacing} mm) matches neither PET nor CT"
            problems.append(Problem(case_id, str(label.get_filename()), message))
    return problems


def _check_pet_values(case_id: str, path: Path, pet: np.ndarray) -> list[Problem]:
    """PET must look like SUV: not all zero, not negative, not Bq/mL, not absurdly high."""
    low, high = float(np.min(pet)), float(np.max(pet))
    if low == 0.0 and high == 0.0:
        return [Problem(case_id, str(path), "PET is all zero")]
    problems = []
    if low < -PET_NEGATIVE_TOLERANCE_SUV:
        problems.append(Problem(case_id, str(path), f"PET has negative values (min {low:.3g}), not SUV"))
    if high > PET_MIN_ACTIVITY_BQML:
        message = f"PET maximum {high:.4g} looks like Bq/mL, not SUV (convert it to SUV first)"
        problems.append(Problem(case_id, str(path), message))
    elif high > PET_MAX_PLAUSIBLE_SUV:
        message = f"PET maximum {high:.4g} SUV is implausible (> {PET_MAX_PLAUSIBLE_SUV:g})"
        problems.append(Problem(case_id, str(path), message))
    return problems


def _check_values(
    case_id: str, role: str, image: nib.spatialimages.SpatialImage, labels: set[int]
) -> list[Problem]:
    """Reads the voxels: corruption, NaN/inf, label values, SUV plausibility."""
    path = Path(image.get_filename())
    try:
        voxels = np.asanyarray(image.dataobj)
    except Exception as error:  # truncated gzip: EOFError, zlib.error, OSError, ValueError ...
        return [
            Problem(
                case_id, str(path), f"corrupt image data, cannot be read ({type(error).__name__}: {error})"
            )
        ]
    if np.issubdtype(voxels.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(voxels)))
        if bad:
            return [Problem(case_id, str(path), f"{bad} NaN or infinite voxel(s)")]
    if role == "label":
        found = {float(v) for v in np.unique(voxels)}
        unexpected = sorted(v for v in found if v not in labels)
        if unexpected:
            shown = ", ".join(f"{v:g}" for v in unexpected[:5])
            message = f"label values {{{shown}}} not in the expected set {sorted(labels)}"
            return [Problem(case_id, str(path), message)]
    if role == "pet":
        return _check_pet_values(case_id, path, voxels)
    return []


def check_case(candidate: layouts.CaseFiles, labels: set[int], label_expected: bool) -> list[Problem]:
    """All checks of one case.

    Args:
        candidate: the case's files as the layout lists them (with its missing members).
        labels: the label values allowed.
        label_expected: report a missing label file (the dataset has labels for other cases).

    Returns:
        The problems found, ``[]`` for a clean case.
    """
    case_id = candidate.case_id
    problems: list[Problem] = []
    images: dict[str, nib.spatialimages.SpatialImage] = {}
    for role in MODALITIES:
        path = Path(getattr(candidate, role))
        if role in candidate.missing:
            if role != "label" or label_expected:
                name = "label" if role == "label" else role.upper()
                problems.append(Problem(case_id, str(path), f"missing {name} file of case {case_id}"))
            continue
        image, header_problems = _check_header(case_id, path)
        problems += header_problems
        if image is not None:
            images[role] = image
    problems += _check_geometry(case_id, images)
    for role, image in images.items():
        problems += _check_values(case_id, role, image, labels)
    return problems


def check_dataset(root: Path, layout: str = "auto", labels: set[int] | None = None) -> list[Problem]:
    """Checks every case of a dataset folder before training.

    Args:
        root: the dataset folder (any layout :func:`h2aseg.data.layouts.read_dataset` knows).
        layout: ``autopet``, ``hecktor``, ``nnunet``, ``flat`` or ``auto``.
        labels: allowed label values; default ``{0, 1}``, ``{0, 1, 2}`` for HECKTOR (GTVp, GTVn).

    Returns:
        One :class:`Problem` per defect, ``[]`` for a clean dataset.
    """
    root = Path(root)
    try:
        resolved = layouts.detect_layout(root) if layout == "auto" else layout
        candidates = layouts.list_case_files(root, resolved)
    except ValueError as error:
        return [Problem("", str(root), str(error).removeprefix(f"{root}: "))]
    if not candidates:
        return [Problem("", str(root), f"no cases found ({resolved} layout)")]
    allowed = labels if labels is not None else ({0, 1, 2} if resolved == "hecktor" else {0, 1})
    label_expected = any("label" not in candidate.missing for candidate in candidates)
    problems: list[Problem] = []
    for candidate in track(candidates, description=f"checking {root.name}", transient=True):
        problems += check_case(candidate, allowed, label_expected)
    logger.info("checked %d cases in %s: %d problem(s)", len(candidates), root, len(problems))
    return problems


def format_problems(problems: Iterable[Problem]) -> Table:
    """Rich table of problems (case, file, problem), one row each."""
    table = Table(title="Dataset problems", show_lines=False)
    for column in ("case", "file", "problem"):
        table.add_column(column, overflow="fold")
    for problem in problems:
        table.add_row(problem.case_id, problem.file, problem.message)
    return table
