"""File helpers every layer shares: atomic writes, NIfTI names and saving, CT/PET overlap, connectivity.

The bottom layer of the package: it imports no other ``h2aseg`` module.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_SUFFIXES = (".nii.gz", ".nii")
"""File name endings of NIfTI images, the longer first (strip ``.nii.gz`` before ``.nii``)."""

LESION_CONNECTIVITY = 18
"""Voxels sharing a face or an edge belong to one lesion (autoPET's rule for FP/FN volumes and the
lesion report's)."""


def temporary_sibling(path: Path) -> Path:
    """A unique hidden name beside ``path`` that ends like it (``.tmp-<pid>-<hex>-case_seg.nii.gz``).

    The ending is kept so that writers choosing the format from the name (nibabel, matplotlib) work.
    Made in the target's folder, so that the final ``os.replace`` is a rename on one file system.
    """
    path = Path(path)
    return path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


def remove_stale_temporaries(folder: Path, prefixes: tuple[str, ...] = (".tmp-",)) -> list[Path]:
    """Remove the entries of ``folder`` named ``{prefix}{pid}-...`` (:func:`temporary_sibling`) whose
    process no longer runs: what a killed write left. Entries of running processes stay.

    Returns:
        The paths removed.
    """
    removed = []
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        prefix = next((prefix for prefix in prefixes if path.name.startswith(prefix)), None)
        pid = path.name[len(prefix) :].partition("-")[0] if prefix else ""
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On an error (or when the block wrote nothing) the temporary file is removed and ``path`` is left
    as it was, so a reader never sees a half-written file.

    Example:
        >>> with atomic_output(out / "report.json") as temporary:
        ...     temporary.write_text(text)
    """
    path = Path(path)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, *, only_if_changed: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, creating its folder; returns ``path``.

    With ``only_if_changed``, a file that already holds exactly ``text`` is left alone (its
    modification time too), so a rerun that changes nothing changes no file.
    """
    path = Path(path)
    if only_if_changed and path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def strip_nifti_suffix(name: str) -> str | None:
    """``"case_pet"`` for ``"case_pet.nii.gz"`` or ``"case_pet.nii"``; ``None`` for other names."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def save_nifti_like(array: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    """Save ``array`` with a copy of ``like``'s header, so the qform/sform (codes included) match it.

    The display range (``cal_min``/``cal_max``) is reset: the source's does not fit a mask.
    """
    header = like.header.copy()
    header.set_data_dtype(array.dtype)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    nib.save(type(like)(array, None, header=header), path)


def world_box_mm(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """``(2, 3)`` lower and upper RAS corners (mm) of the volume, voxel edges included.

    A voxel covers ±half a voxel around its centre, so the volume's extent runs from the outer edge
    of the first voxel to the outer edge of the last one (centres alone would shrink a one-slice
    volume to a plane).
    """
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in image.shape[:3]])))
    world = nib.affines.apply_affine(image.affine, corners)
    return np.stack([world.min(axis=0), world.max(axis=0)])


def overlap_problem(ct: nib.spatialimages.SpatialImage, pet: nib.spatialimages.SpatialImage) -> str | None:
    """``None`` when CT and PET share a volume of space, else a one-line description of both extents.

    The rule used by both ``check-data`` and ``predict``: the two boxes of :func:`world_box_mm` must
    overlap with positive thickness along every axis (boxes that only touch share no voxel).
    """
    ct_box, pet_box = world_box_mm(ct), world_box_mm(pet)
    if np.all(np.maximum(ct_box[0], pet_box[0]) < np.minimum(ct_box[1], pet_box[1])):
        return None
    return f"CT and PET do not overlap in space (CT {_box_text(ct_box)} mm, PET {_box_text(pet_box)} mm)"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _box_text(box: np.ndarray) -> str:
    return " x ".join(f"[{low:.0f}, {high:.0f}]" for low, high in box.T)
