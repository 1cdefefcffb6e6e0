"""Integrity check of a PET/CT dataset before training: one line per problem, naming the file.

Headers are read first (dimensions, grids, physical overlap); voxel data only for the value
checks (corruption, NaN/inf, label values, SUV plausibility).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.progress import track
from rich.table import Table

from h2aseg.data import layouts
from h2aseg.io import overlap_problem, world_box_mm

logger = logging.getLogger(__name__)

PET_NEGATIVE_TOLERANCE_SUV = 0.5
"""PET may dip this far below 0 SUV (reconstruction/resampling ringing) before it is reported."""
PET_MAX_PLAUSIBLE_SUV = 100.0
"""A whole-body FDG SUVmax above this is not physiological: wrong units or scaling."""
PET_MIN_ACTIVITY_BQML = 1000.0
"""A PET maximum above this looks like activity concentration in Bq/mL rather than SUV."""
GRID_TOLERANCE_MM = 1e-3
"""Two grids are the same when their affines agree to this many mm."""
CT_MIN_HU = -3100.0
"""Below this a CT is not in HU (scanners pad outside the field of view with -3024 HU at most)."""
CT_AIR_MAX_HU = -500.0
"""A CT whose minimum is above this has no air: raw stored values, or a normalised image, not HU."""
MIN_CT_COVERAGE = 0.75
"""Default least fraction of the PET's body extent along z (superior-inferior) that the CT must cover
(HECKTOR-like studies, whose PET reaches further than the CT, measure about 0.8 on the phantom)."""
MIN_CT_COVERAGE_TRANSVERSE = 0.5
"""Least fraction along x and y (left-right, anterior-posterior) when the z check is on: a CT's
reconstructed field of view (about 500 mm) is often narrower than the PET's (about 700 mm)."""
PET_BODY_FRACTION = 0.1
"""PET voxels above this fraction of the PET's 99th percentile are the body (whatever the units)."""
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


def _read_voxels(
    case_id: str, image: nib.spatialimages.SpatialImage
) -> tuple[np.ndarray | None, list[Problem]]:
    """The voxels of ``image``, or a problem when its data cannot be read."""
    try:
        return np.asanyarray(image.dataobj), []
    except Exception as error:  # truncated gzip: EOFError, zlib.error, OSError, ValueError ...
        message = f"corrupt image data, cannot be read ({type(error).__name__}: {error})"
        return None, [Problem(case_id, str(image.get_filename()), message)]


def _check_ct_values(case_id: str, path: Path, ct: np.ndarray) -> list[Problem]:
    """CT must look like Hounsfield units: air near -1000 present, nothing below the scanners' padding."""
    low, high = float(np.min(ct)), float(np.max(ct))
    if low < CT_MIN_HU:
        return [Problem(case_id, str(path), f"CT minimum {low:.4g} is below {CT_MIN_HU:g}: not in HU")]
    if low > CT_AIR_MAX_HU:
        message = (
            f"CT values [{low:.4g}, {high:.4g}] hold no air (min > {CT_AIR_MAX_HU:g}): not in HU "
            "(raw stored values or a normalised image?)"
        )
        return [Problem(case_id, str(path), message)]
    return []


def _check_values(
    case_id: str,
    role: str,
    path: Path,
    voxels: np.ndarray,
    labels: set[int],
    allow_non_suv: bool = False,
) -> list[Problem]:
    """Value checks of one file: NaN/inf, label values, CT in HU, SUV plausibility (unless
    ``allow_non_suv``: other tracers or units)."""
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
    if role == "ct":
        return _check_ct_values(case_id, path, voxels)
    if role == "pet":
        if allow_non_suv:
            zero = float(np.min(voxels)) == 0.0 == float(np.max(voxels))
            return [Problem(case_id, str(path), "PET is all zero")] if zero else []
        return _check_pet_values(case_id, path, voxels)
    return []


def ct_coverage(ct_box_mm: np.ndarray, pet_voxels: np.ndarray, pet_affine: np.ndarray) -> np.ndarray:
    """Fraction of the PET's body extent covered by the CT, per world axis.

    Args:
        ct_box_mm: ``(2, 3)`` lower and upper corners of the CT, world mm.
        pet_voxels: ``(X, Y, Z)`` PET values; the body is the voxels above ``PET_BODY_FRACTION``
            of the 99th percentile (finite values only).
        pet_affine: ``(4, 4)`` voxel index to the same world mm as ``ct_box_mm``.

    Returns:
        ``(3,)`` fractions in [0, 1] (all 1 for a PET without body).
    """
    finite = np.nan_to_num(np.asarray(pet_voxels, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    level = PET_BODY_FRACTION * float(np.percentile(finite, 99))
    body = np.argwhere(finite > level) if level > 0 else np.empty((0, 3))
    if len(body) == 0:
        return np.ones(3)
    corners = np.array(list(itertools.product(*zip(body.min(axis=0), body.max(axis=0), strict=True))))
    world = nib.affines.apply_affine(pet_affine, corners.astype(float))
    body_box = np.stack([world.min(axis=0), world.max(axis=0)])
    length = np.maximum(body_box[1] - body_box[0], 1e-6)
    covered = np.minimum(ct_box_mm[1], body_box[1]) - np.maximum(ct_box_mm[0], body_box[0])
    return np.clip(covered / length, 0.0, 1.0)


def coverage_message(fractions: np.ndarray, min_coverage: float) -> str | None:
    """The refusal of a CT covering less than ``min_coverage`` of the PET body along z, or less than
    ``min(min_coverage, MIN_CT_COVERAGE_TRANSVERSE)`` along x or y; ``None`` when it covers enough."""
    transverse = min(min_coverage, MIN_CT_COVERAGE_TRANSVERSE)
    for axis, least in ((2, min_coverage), (0, transverse), (1, transverse)):
        if fractions[axis] < least:
            return (
                f"CT covers {100 * fractions[axis]:.0f} % of the PET body extent along {'xyz'[axis]} "
                f"(< {100 * least:.0f} %; another study, or a partial CT?)"
            )
    return None


def _check_ct_coverage(
    case_id: str,
    ct: nib.spatialimages.SpatialImage,
    pet: nib.spatialimages.SpatialImage,
    pet_voxels: np.ndarray,
    min_coverage: float,
) -> list[Problem]:
    """The CT (voxel edges) must cover enough of the PET's body extent (RAS mm): :func:`coverage_message`."""
    message = coverage_message(ct_coverage(world_box_mm(ct), pet_voxels, pet.affine), min_coverage)
    return [] if message is None else [Problem(case_id, str(ct.get_filename()), message)]


def check_case(
    candidate: layouts.CaseFiles,
    labels: set[int],
    label_expected: bool,
    allow_non_suv: bool = False,
    min_ct_coverage: float = MIN_CT_COVERAGE,
) -> list[Problem]:
    """All checks of one case.

    Args:
        candidate: the case's files as the layout lists them (with its missing members).
        labels: the label values allowed.
        label_expected: report a missing label file (the dataset has labels for other cases).
        allow_non_suv: skip the SUV plausibility of the PET (other tracers, other units).
        min_ct_coverage: least fraction of the PET body extent the CT covers per axis (0 = no check).

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
    geometry_problems = _check_geometry(case_id, images)
    problems += geometry_problems
    for role, image in images.items():
        voxels, read_problems = _read_voxels(case_id, image)
        problems += read_problems
        if voxels is None:
            continue
        value_problems = _check_values(
            case_id, role, Path(image.get_filename()), voxels, labels, allow_non_suv
        )
        problems += value_problems
        clean = not (value_problems or geometry_problems)
        if role == "pet" and clean and "ct" in images and min_ct_coverage > 0:
            problems += _check_ct_coverage(case_id, images["ct"], image, voxels, min_ct_coverage)
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
