"""PET/CT DICOM series to NIfTI: PET in body-weight SUV (g/mL), CT in HU, both on the PET grid.

Pixel data and geometry come from SimpleITK (which applies each slice's own rescale slope),
tags from pydicom; the SUV factor from :mod:`h2aseg.data.dicom.suv`.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from h2aseg.data.check import coverage_message, ct_coverage
from h2aseg.data.dicom.rtstruct import FRAME_OF_REFERENCE_KEY, roi_names, rtstruct_to_mask
from h2aseg.data.dicom.suv import (
    PET_IMAGE_STORAGE,
    DicomSuvError,
    SuvCalibration,
    series_suv_calibration,
    suv_calibration,
    suv_factor,
    text_value,
)
from h2aseg.io import atomic_output

__all__ = [
    "DicomSuvError",
    "SuvCalibration",
    "convert_dicom",
    "read_ct_hu",
    "read_pet_suv",
    "series_suv_calibration",
    "suv_calibration",
    "suv_factor",
]

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_ID_KEY = "0010|0020"


def _series_files(
    series_dir: Path, modality: str, sop_class: str, series_uid: str | None
) -> list[tuple[Path, Dataset]]:
    """The (path, header) pairs of the one series of this kind under ``series_dir`` (searched recursively)."""
    if not series_dir.is_dir():
        raise ValueError(f"{series_dir}: not a folder")
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in series_dir.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            continue
        if text_value(ds, "Modality") == modality and text_value(ds, "SOPClassUID") == sop_class:
            series.setdefault(text_value(ds, "SeriesInstanceUID"), []).append((path, ds))
    if series_uid is not None:
        series = {uid: files for uid, files in series.items() if uid == series_uid}
    if not series:
        raise ValueError(f"{series_dir}: no {modality} series of SOP class {sop_class} found")
    if len(series) > 1:
        listing = "; ".join(f"{uid} ({len(files)} slices)" for uid, files in series.items())
        raise ValueError(f"{series_dir}: several {modality} series, pick one with series_uid: {listing}")
    return next(iter(series.values()))


def _sorted_slices(files: list[tuple[Path, Dataset]], series_dir: Path) -> list[tuple[Path, Dataset]]:
    """Slices ordered along the slice normal; duplicate positions are refused."""
    try:
        orientation = np.asarray(files[0][1].ImageOrientationPatient, dtype=float)
        positions_mm = np.asarray([ds.ImagePositionPatient for _, ds in files], dtype=float)
    except AttributeError as error:
        raise ValueError(f"{series_dir}: a slice lacks its position or orientation ({error})") from error
    positions = positions_mm @ np.cross(orientation[:3], orientation[3:])
    order = np.argsort(positions, kind="stable")
    if len(files) > 1 and np.min(np.diff(positions[order])) < 1e-3:
        raise ValueError(f"{series_dir}: several slices share one position (two acquisitions in one series?)")
    return [files[index] for index in order]


def _read_series(files: list[tuple[Path, Dataset]]) -> sitk.Image:
    """Pixel data and geometry through SimpleITK, which applies each slice's own slope and intercept."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path, _ in files])
    reader.SetOutputPixelType(sitk.sitkFloat64)
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ValueError(_unreadable_slice(files, error)) from error
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    image.SetMetaData(FRAME_OF_REFERENCE_KEY, text_value(files[0][1], "FrameOfReferenceUID"))
    image.SetMetaData(PATIENT_ID_KEY, text_value(files[0][1], "PatientID"))
    return image


def _unreadable_slice(files: list[tuple[Path, Dataset]], error: RuntimeError) -> str:
    """``"FILE: unreadable DICOM slice (...)"`` for the first slice SimpleITK cannot read alone."""
    for path, _ in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as slice_error:
            lines = [line.strip() for line in str(slice_error).splitlines() if line.strip()]
            reason = (lines[-1] if lines else "").removeprefix("sitk::ERROR:").strip()
            reason = reason.split(f' for "{path}"')[0][:200]  # SimpleITK repeats the path
            return f"{path}: unreadable DICOM slice ({reason})"
    return f"{files[0][0].parent}: the series cannot be read ({str(error).strip().splitlines()[0][:200]})"


def read_pet_suv(series_dir: Path, series_uid: str | None = None) -> sitk.Image:
    """Read a PET series and convert it to body-weight SUV.

    Args:
        series_dir: a folder holding the series (searched recursively; other series, other
            modalities and non-DICOM files are ignored).
        series_uid: the SeriesInstanceUID to read when the folder holds several PET series.

    Returns:
        float32 SUV image (g/mL) in LPS patient geometry; metadata ``0020|0052`` holds the
        FrameOfReferenceUID, ``0010|0020`` the PatientID.

    Raises:
        DicomSuvError: the series cannot be converted to SUV (see
            :func:`h2aseg.data.dicom.suv.suv_calibration`).
        ValueError: no PET series, several, or slices sharing a position.
    """
    series_dir = Path(series_dir)
    files = _sorted_slices(_series_files(series_dir, "PT", PET_IMAGE_STORAGE, series_uid), series_dir)
    calibration = series_suv_calibration([ds for _, ds in files], [path for path, _ in files])
    logger.info("%s: SUV factor %.6g (%s)", series_dir, calibration.factor, calibration.method)
    image = _read_series(files)
    suv = sitk.Cast(image * calibration.factor, sitk.sitkFloat32)
    suv.CopyInformation(image)
    for key in (FRAME_OF_REFERENCE_KEY, PATIENT_ID_KEY):
        suv.SetMetaData(key, image.GetMetaData(key))
    return suv


def read_ct_hu(series_dir: Path, series_uid: str | None = None) -> sitk.Image:
    """Read a CT series in Hounsfield units.

    Args:
        series_dir: a folder holding the series (searched recursively).
        series_uid: the SeriesInstanceUID to read when the folder holds several CT series.

    Returns:
        float32 HU image in LPS patient geometry; metadata ``0020|0052`` holds the FrameOfReferenceUID,
        ``0010|0020`` the PatientID.

    Raises:
        ValueError: no CT series, several, or slices sharing a position.
    """
    series_dir = Path(series_dir)
    files = _sorted_slices(_series_files(series_dir, "CT", CT_IMAGE_STORAGE, series_uid), series_dir)
    image = _read_series(files)
    ct_hu = sitk.Cast(image, sitk.sitkFloat32)
    for key in (FRAME_OF_REFERENCE_KEY, PATIENT_ID_KEY):
        ct_hu.SetMetaData(key, image.GetMetaData(key))
    return ct_hu


def _write_all_or_nothing(images: dict[str, sitk.Image], out_dir: Path) -> dict[str, Path]:
    """Write ``{name}.nii.gz`` files under temporary names in ``out_dir``, then rename them all.

    On failure nothing is left: neither a temporary file nor an ``out_dir`` made here.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {name: out_dir / f"{name}.nii.gz" for name in images}
    try:
        with ExitStack() as stack:
            staged = {name: stack.enter_context(atomic_output(path)) for name, path in written.items()}
            for name, image in images.items():
                sitk.WriteImage(image, str(staged[name]), useCompression=True)
    except BaseException:
        if created:
            out_dir.rmdir()
        raise
    return written


def convert_dicom(
    ct_dir: Path | None,
    pet_dir: Path | None,
    out_dir: Path,
    rtstruct: Path | None = None,
    roi: str | None = None,
    *,
    allow_different_frames: bool = False,
    min_ct_coverage: float = 0.0,
) -> dict[str, Path]:
    """Convert a CT and/or PET DICOM series (and optionally one RTSTRUCT ROI) to NIfTI.

    Writes ``pet_suv.nii.gz`` (float32 SUV), ``ct.nii.gz`` (float32 HU, resampled linearly onto
    the PET grid when both are given, -1000 HU outside the CT) and ``mask.nii.gz`` (uint8, on the
    PET grid, or on the CT grid when only CT is given). Nothing is written unless all succeed.

    Args:
        ct_dir: folder of the CT series, or None.
        pet_dir: folder of the PET series, or None.
        out_dir: output folder (created).
        rtstruct: an RTSTRUCT file, or None.
        roi: the ROI name in the RTSTRUCT (case-insensitive); may be omitted when it holds one ROI.
        allow_different_frames: accept a CT and a PET of different patients (PatientID) or frames
            of reference (FrameOfReferenceUID); refused otherwise.
        min_ct_coverage: least fraction of the PET's body extent the CT covers along z (x, y: see
            :func:`h2aseg.data.check.coverage_message`), checked before the CT is resampled; 0 = none.

    Returns:
        ``{"pet_suv": path, "ct": path, "mask": path}``, with only the files written.

    Raises:
        ValueError: from the readers and :func:`h2aseg.data.dicom.rtstruct.rtstruct_to_mask`
            (DicomSuvError and RtStructError are ValueErrors), a truncated slice (named), CT and
            PET of different patients or frames, a CT short of ``min_ct_coverage``, or neither
            folder given.
    """
    if ct_dir is None and pet_dir is None:
        raise ValueError("convert_dicom: give a CT folder, a PET folder, or both")
    images: dict[str, sitk.Image] = {}
    if pet_dir is not None:
        images["pet_suv"] = read_pet_suv(Path(pet_dir))
    if ct_dir is not None:
        ct_hu = read_ct_hu(Path(ct_dir))
        if "pet_suv" in images:
            pet = images["pet_suv"]
            check_same_study(ct_hu, pet, Path(ct_dir), allow_different_frames)
            message = coverage_message(
                ct_coverage(_box_mm(ct_hu), _voxels(pet), _affine(pet)), min_ct_coverage
            )
            if message is not None:
                raise ValueError(f"{ct_dir}: {message}")
            ct_hu = sitk.Resample(ct_hu, pet, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
        images["ct"] = ct_hu
    if rtstruct is not None:
        reference = images.get("pet_suv", images.get("ct"))
        if roi is None:
            names = roi_names(Path(rtstruct))
            if len(names) != 1:
                raise ValueError(f"{rtstruct}: holds ROIs {names}; choose one with roi")
            roi = names[0]
        images["mask"] = rtstruct_to_mask(Path(rtstruct), roi, reference)
    return _write_all_or_nothing(images, Path(out_dir))


def check_same_study(ct_hu: sitk.Image, pet: sitk.Image, ct_dir: Path, allow_different: bool) -> None:
    """Refuse (or, with ``allow_different``, warn about) a CT of another patient or frame of reference."""
    for key, name in ((PATIENT_ID_KEY, "PatientID"), (FRAME_OF_REFERENCE_KEY, "FrameOfReferenceUID")):
        ct_value, pet_value = ct_hu.GetMetaData(key), pet.GetMetaData(key)
        if ct_value != pet_value:
            message = f"{ct_dir}: CT {name} {ct_value!r} differs from the PET's {pet_value!r}"
            if not allow_different:
                raise ValueError(f"{message} (another patient or study? --allow-different-frames to accept)")
            logger.warning("%s: accepted, but the two may not be registered", message)


def _affine(image: sitk.Image) -> np.ndarray:
    """``(4, 4)`` voxel index ``(x, y, z)`` to LPS mm of a SimpleITK image."""
    affine = np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)
    affine[:3, 3] = image.GetOrigin()
    return affine


def _box_mm(image: sitk.Image) -> np.ndarray:
    """``(2, 3)`` LPS mm corners (voxel centres) of a SimpleITK image."""
    size = np.asarray(image.GetSize()) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], float)
    world = corners @ _affine(image)[:3, :3].T + _affine(image)[:3, 3]
    return np.stack([world.min(axis=0), world.max(axis=0)])


def _voxels(image: sitk.Image) -> np.ndarray:
    """``(X, Y, Z)`` voxel array of a SimpleITK image (its NumPy view is ``(Z, Y, X)``)."""
    return np.transpose(sitk.GetArrayViewFromImage(image), (2, 1, 0))
