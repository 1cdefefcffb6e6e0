"""DICOM series reading and conversion: synthetic series with closed-form SUV/HU, real STS PET/CT."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from h2aseg.data.dicom.rtstruct import RtStructError, rtstruct_to_mask
from h2aseg.data.dicom.series import CT_IMAGE_STORAGE, DicomSuvError, convert_dicom, read_ct_hu, read_pet_suv
from h2aseg.data.dicom.suv import PET_IMAGE_STORAGE

FRAME_UID = "1.2.826.0.1.3680043.8.498.2"
PET_SLOPES = (0.5, 1.0, 2.0, 0.25)
PET_FACTOR = 70000 / (3.7e8 * math.exp(-math.log(2) * 3600 / 6588))  # 70 kg, 370 MBq, 1 h, 18F


def write_slice(
    path: Path, sop_class: str, modality: str, series_uid: str, pixels: np.ndarray, **tags: object
) -> None:
    """One int16 axial slice; ``tags`` (keyword=value) complete the header."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.3", series_uid, FRAME_UID
    ds.PatientID, ds.ImageOrientationPatient = "synthetic", [1, 0, 0, 0, 1, 0]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = pixels.astype(np.int16).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def pet_series_pixels() -> np.ndarray:
    """Stored values ``(z, y, x)`` = 4 x 8 x 8, distinct per voxel."""
    return np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8) + 10


def write_pet_series(folder: Path, slice_tags: dict[int, dict] | None = None, **series_tags: object) -> Path:
    """4 slices of 8 x 8, 4 mm pixels, 3 mm apart from z = 0, origin (-21, -21); a slope per slice.

    ``series_tags`` override the header of every slice, ``slice_tags[k]`` that of slice k only.
    """
    folder.mkdir(parents=True, exist_ok=True)
    drug = Dataset()
    drug.RadiopharmaceuticalStartTime, drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = (
        "090000",
        3.7e8,
        6588,
    )
    series_uid = generate_uid()
    for index, (pixels, slope) in enumerate(zip(pet_series_pixels(), PET_SLOPES, strict=True)):
        tags = (
            {
                "ImagePositionPatient": [-21, -21, 3.0 * index],
                "PixelSpacing": [4, 4],
                "SliceThickness": 3,
                "RescaleSlope": slope,
                "RescaleIntercept": 0,
                "InstanceNumber": 4 - index,
                "Units": "BQML",
                "DecayCorrection": "START",
                "CorrectedImage": ["ATTN", "DECY"],
                "PatientWeight": 70,
                "SeriesDate": "20240102",
                "SeriesTime": "100000",
                "AcquisitionTime": "100000",
                "RadiopharmaceuticalInformationSequence": [drug],
            }
            | series_tags
            | (slice_tags or {}).get(index, {})
        )
        name = folder / f"slice_{3 - index}.dcm"  # file order opposite to the z order
        write_slice(name, PET_IMAGE_STORAGE, "PT", series_uid, pixels, **tags)
    return folder


def ct_hu_at(x_mm: np.ndarray, y_mm: np.ndarray, z_mm: np.ndarray) -> np.ndarray:
    """The synthetic CT is linear in space, so linear resampling reproduces it exactly."""
    return 10 * x_mm + 5 * y_mm + z_mm


def write_ct_series(folder: Path) -> Path:
    """6 slices of 16 x 16, 2 mm pixels from (-15, -15), 2 mm apart from z = 0, stored HU + 1024."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    coordinates = -15 + 2 * np.arange(16.0)
    for index in range(6):
        hu = ct_hu_at(coordinates[None, :], coordinates[:, None], np.full((16, 16), 2.0 * index))
        tags = {"ImagePositionPatient": [-15, -15, 2.0 * index], "PixelSpacing": [2, 2], "SliceThickness": 2}
        tags |= {"RescaleSlope": 1, "RescaleIntercept": -1024, "InstanceNumber": index + 1}
        write_slice(folder / f"ct_{index}.dcm", CT_IMAGE_STORAGE, "CT", series_uid, hu + 1024, **tags)
    return folder


def test_read_pet_suv_closed_form_with_slope_per_slice(tmp_path: Path) -> None:
    folder = write_pet_series(tmp_path / "pet")
    (folder / "notes.txt").write_text("not DICOM")
    write_ct_series(folder / "ct")
    suv = read_pet_suv(folder)
    assert suv.GetPixelID() == sitk.sitkFloat32
    assert suv.GetSize() == (8, 8, 4) and suv.GetSpacing() == pytest.approx((4, 4, 3))
    assert suv.GetOrigin() == pytest.approx((-21, -21, 0))
    expected = PET_FACTOR * pet_series_pixels() * np.asarray(PET_SLOPES)[:, None, None]
    np.testing.assert_allclose(sitk.GetArrayFromImage(suv), expected, rtol=1e-6)


def test_read_pet_suv_refuses_contradictory_slices(tmp_path: Path) -> None:
    folder = write_pet_series(tmp_path / "pet", slice_tags={2: {"PatientWeight": 80}})
    with pytest.raises(DicomSuvError, match="PatientWeight 80"):
        read_pet_suv(folder)


def test_read_pet_suv_asks_which_series_when_several(tmp_path: Path) -> None:
    write_pet_series(tmp_path / "both" / "ac")
    write_pet_series(tmp_path / "both" / "nac", CorrectedImage=["DECY"])
    with pytest.raises(ValueError, match="several PT series"):
        read_pet_suv(tmp_path / "both")
    with pytest.raises(ValueError, match="no PT series"):
        read_pet_suv(write_ct_series(tmp_path / "ct"))


def test_read_ct_hu(tmp_path: Path) -> None:
    ct = read_ct_hu(write_ct_series(tmp_path / "ct"))
    assert ct.GetSize() == (16, 16, 6)
    coordinates = -15 + 2 * np.arange(16.0)
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(ct)[3],
        ct_hu_at(coordinates[None, :], coordinates[:, None], np.full((16, 16), 6.0)),
    )


def test_convert_dicom_writes_nifti_on_the_pet_grid(tmp_path: Path) -> None:
    pet_dir, ct_dir = write_pet_series(tmp_path / "pet"), write_ct_series(tmp_path / "ct")
    written = convert_dicom(ct_dir, pet_dir, tmp_path / "out")
    assert set(written) == {"pet_suv", "ct"} and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "ct.nii.gz",
        "pet_suv.nii.gz",
    ]
    pet, ct = nib.load(written["pet_suv"]), nib.load(written["ct"])
    ras_affine = np.array([[-4, 0, 0, 21], [0, -4, 0, 21], [0, 0, 3, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_allclose(pet.affine, ras_affine, atol=1e-5)
    np.testing.assert_allclose(ct.affine, ras_affine, atol=1e-5)
    expected_suv = PET_FACTOR * pet_series_pixels() * np.asarray(PET_SLOPES)[:, None, None]
    np.testing.assert_allclose(pet.get_fdata(), expected_suv.transpose(2, 1, 0), rtol=1e-6)
    ct_xyz = ct.get_fdata()
    x_mm, y_mm, z_mm = -21 + 4 * np.arange(8.0), -21 + 4 * np.arange(8.0), 3 * np.arange(4.0)
    inside = ct_hu_at(x_mm[2:, None, None], y_mm[None, 2:, None], z_mm[None, None, :])
    np.testing.assert_allclose(ct_xyz[2:, 2:, :], inside, atol=1e-3)
    assert (ct_xyz[:2] == -1000).all() and (ct_xyz[:, :2] == -1000).all()


def test_convert_dicom_single_modality_and_failure_leaves_nothing(tmp_path: Path) -> None:
    pet_dir = write_pet_series(tmp_path / "pet")
    assert set(convert_dicom(None, pet_dir, tmp_path / "pet_only")) == {"pet_suv"}
    assert set(convert_dicom(write_ct_series(tmp_path / "ct"), None, tmp_path / "ct_only")) == {"ct"}
    with pytest.raises(RtStructError, match="not an RT Structure Set"):
        convert_dicom(None, pet_dir, tmp_path / "failed", rtstruct=next(pet_dir.glob("*.dcm")))
    assert not (tmp_path / "failed").exists()
    with pytest.raises(ValueError, match="CT folder, a PET folder"):
        convert_dicom(None, None, tmp_path / "nothing")


def test_convert_dicom_write_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pet_dir, ct_dir = write_pet_series(tmp_path / "pet"), write_ct_series(tmp_path / "ct")
    real_write = sitk.WriteImage

    def write_then_fail(image: sitk.Image, path: str, *args: object, **kwargs: object) -> None:
        if path.endswith("ct.nii.gz"):
            raise OSError("disk full")
        real_write(image, path, *args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        convert_dicom(ct_dir, pet_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "existing").mkdir()
    with pytest.raises(OSError, match="disk full"):
        convert_dicom(ct_dir, pet_dir, tmp_path / "existing")
    assert list((tmp_path / "existing").iterdir()) == []


@pytest.fixture(scope="module")
def raw_sts_pet(shared_data: Path) -> sitk.Image:
    folder = shared_data / "sts-petct" / "sts_images_raw" / "STS_001" / "FDG_PET"
    return read_pet_suv(folder / "image")


def test_raw_ge_whole_body_pet(raw_sts_pet: sitk.Image, shared_data: Path) -> None:
    """267 GE slices, a slope each: SUVmax 66.52 and MIRP's cropped SUV image to 1e-3."""
    suv = sitk.GetArrayFromImage(raw_sts_pet)
    assert suv.shape == (267, 128, 128)
    assert float(suv.max()) == pytest.approx(66.52, abs=0.005)
    cropped = sitk.ReadImage(str(shared_data / "sts-petct/sts_images/STS_001/PET/nifti/image/image.nii.gz"))
    on_crop = sitk.Resample(raw_sts_pet, cropped, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_allclose(sitk.GetArrayFromImage(on_crop), sitk.GetArrayFromImage(cropped), atol=1e-3)


def test_raw_rtstruct_gtv_on_whole_body_grid(
    raw_sts_pet: sitk.Image, tmp_path: Path, shared_data: Path
) -> None:
    """The GTV of the raw RTSTRUCT on the whole-body grid is MIRP's cropped mask, voxel for voxel."""
    rtstruct = shared_data / "sts-petct" / "sts_images_raw" / "STS_001" / "FDG_PET" / "mask" / "1-1.dcm"
    mask = rtstruct_to_mask(rtstruct, "gtv_mass", raw_sts_pet)
    assert mask.GetSize() == raw_sts_pet.GetSize()
    cropped = sitk.ReadImage(str(shared_data / "sts-petct/sts_images/STS_001/PET/nifti/mask/mask.nii.gz"))
    on_crop = sitk.GetArrayFromImage(sitk.Resample(mask, cropped, sitk.Transform(), sitk.sitkNearestNeighbor))
    np.testing.assert_array_equal(on_crop, sitk.GetArrayFromImage(cropped))
    assert sitk.GetArrayFromImage(mask).sum() == 5095
    cropped_pet = shared_data / "sts-petct" / "sts_images" / "STS_001" / "PET" / "dicom" / "image"
    with pytest.raises(ValueError, match="GTV_Edema"):
        convert_dicom(None, cropped_pet, tmp_path / "ambiguous", rtstruct=rtstruct)
    assert not (tmp_path / "ambiguous").exists()


def test_cropped_sts_convert_matches_mirp_nifti(tmp_path: Path, shared_data: Path) -> None:
    """GML PET (factor 1, not scaled again), CT onto the PET grid, GTV mask: as MIRP's NIfTI."""
    case = shared_data / "sts-petct" / "sts_images" / "STS_003"
    rtstruct = case / "PET" / "dicom" / "mask" / "RS.dcm"
    written = convert_dicom(
        case / "CT" / "dicom" / "image", case / "PET" / "dicom" / "image", tmp_path, rtstruct
    )
    pet_ours, pet_mirp = (
        nib.load(written["pet_suv"]),
        nib.load(case / "PET" / "nifti" / "image" / "image.nii.gz"),
    )
    np.testing.assert_allclose(pet_ours.affine, pet_mirp.affine, atol=1e-3)
    np.testing.assert_allclose(pet_ours.get_fdata(), pet_mirp.get_fdata(), atol=1e-5)
    mask_ours = np.asarray(nib.load(written["mask"]).dataobj).astype(bool)
    mask_mirp = np.asarray(nib.load(case / "PET" / "nifti" / "mask" / "mask.nii.gz").dataobj).astype(bool)
    assert 2 * (mask_ours & mask_mirp).sum() / (mask_ours.sum() + mask_mirp.sum()) > 0.99
    ct_mirp = sitk.ReadImage(str(case / "CT" / "nifti" / "image" / "image.nii.gz"))
    pet_grid = sitk.ReadImage(str(written["pet_suv"]))
    ct_expected = sitk.Resample(
        ct_mirp, pet_grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32
    )
    ct_ours = sitk.ReadImage(str(written["ct"]))
    # MIRP's NIfTI keeps its geometry in float32: sample positions differ by ~1e-5 mm.
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(ct_ours), sitk.GetArrayFromImage(ct_expected), atol=0.05
    )
    assert pydicom.dcmread(next((case / "PET" / "dicom" / "image").iterdir())).Units == "GML"
