"""DICOM SEG output on real PET/CT DICOM: read back with highdicom, voxel for voxel against the NIfTI mask.

The SEG is rebuilt on the source grid without our geometry code: SimpleITK orders the source files
(GDCM) and writes the stacked frames as NIfTI with the series' geometry, as the DICOM conversion did.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from nibabel.processing import resample_from_to
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.data.dicom import convert_dicom
from h2aseg.models import build_model

hd = pytest.importorskip("highdicom", reason="the dicom-seg extra (highdicom) is not installed")
from h2aseg.inference.dicom_seg import write_dicom_seg  # noqa: E402

STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sts-petct"
RAW_PET = STS / "sts_images_raw" / "STS_001" / "FDG_PET" / "image"
CROPPED = STS / "sts_images" / "STS_001"
pytestmark = pytest.mark.skipif(not RAW_PET.is_dir(), reason=f"{STS} (shared test data) is not there")


def _seg_on_source_grid(seg_path: Path, source: Path, out: Path) -> np.ndarray:
    """The SEG's labels as a NIfTI volume on the source series' grid, in that NIfTI's voxel order."""
    seg = hd.seg.segread(seg_path)
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source))
    uids = [pydicom.dcmread(name, stop_before_pixels=True).SOPInstanceUID for name in files]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    reference = sitk.ReadImage(files)
    stacked = sitk.GetImageFromArray(frames.astype(np.uint8))  # (slice, row, column) = (k, j, i)
    stacked.CopyInformation(reference)
    sitk.WriteImage(stacked, str(out))
    return np.asarray(nib.load(out).dataobj)


@pytest.mark.slow  # reads and writes the 267-slice whole-body series
def test_seg_of_an_asymmetric_mask_round_trips_voxel_for_voxel(tmp_path: Path) -> None:
    pet = nib.load(convert_dicom(None, RAW_PET, tmp_path / "nifti")["pet_suv"])
    mask = np.zeros(pet.shape, dtype=np.uint8)  # (128, 128, 267): no flip maps it onto itself
    mask[10:30, 50:60, 100:140] = 1
    mask[12:14, 52:55, 139:150] = 1
    mask[70:75, 20:40, 5:9] = 2
    mask_path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, pet.affine), mask_path)

    seg_path = write_dicom_seg(
        mask_path, RAW_PET, tmp_path / "seg.dcm", {0: "background", 1: "GTVp", 2: "GTVn"}
    )

    seg = hd.seg.segread(seg_path)
    source = pydicom.dcmread(next(RAW_PET.iterdir()), stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    descriptions = [seg.get_segment_description(number) for number in (1, 2)]
    assert [d.segment_label for d in descriptions] == ["GTVp", "GTVn"]
    assert descriptions[0].segmented_property_type.meaning == "Neoplasm"
    assert descriptions[0].segmented_property_category.meaning == "Morphologically Abnormal Structure"
    rebuilt = _seg_on_source_grid(seg_path, RAW_PET, tmp_path / "rebuilt.nii.gz")
    np.testing.assert_allclose(nib.load(tmp_path / "rebuilt.nii.gz").affine, pet.affine, atol=1e-3)
    np.testing.assert_array_equal(rebuilt, mask)


@pytest.mark.parametrize("grid", ["pet", "ct"])
def test_predict_from_dicom_writes_a_seg_equal_to_its_nifti_mask(tmp_path: Path, grid: str) -> None:
    torch.manual_seed(0)
    model = build_model("unet3d", features=[2, 2, 4, 4, 8, 2])
    config = {
        "model": {"name": "unet3d", "features": [2, 2, 4, 4, 8, 2]},
        "preprocess": {"patch_size": [32, 32, 16]},
        "classes": {0: "background", 1: "sarcoma"},
    }
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state}, tmp_path / "m.ckpt")
    pet_dicom, ct_dicom = CROPPED / "PET" / "dicom" / "image", CROPPED / "CT" / "dicom" / "image"
    arguments = ["predict", "--model", str(tmp_path / "m.ckpt"), "--ct-dicom", str(ct_dicom)]
    arguments += ["--pet-dicom", str(pet_dicom), "--out", str(tmp_path / "out"), "--dicom-seg"]
    result = CliRunner().invoke(app, [*arguments, "--grid", grid, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (seg_path,) = (tmp_path / "out").glob("*_seg.dcm")
    (mask_path,) = (tmp_path / "out").glob("*_seg.nii.gz")
    mask_image = nib.load(mask_path)
    mask = np.asarray(mask_image.dataobj)
    assert 0 < mask.sum() < mask.size  # a random network: both labels present
    assert hd.seg.segread(seg_path).get_segment_description(1).segment_label == "sarcoma"
    source = pet_dicom if grid == "pet" else ct_dicom
    rebuilt = _seg_on_source_grid(seg_path, source, tmp_path / "r.nii.gz")
    if grid == "pet":
        np.testing.assert_array_equal(rebuilt, mask)
        return
    # DICOM input has its CT converted onto the PET grid, so the SEG on the CT series' own 0.98 mm
    # grid is the PET-grid mask sampled there: nibabel's nearest-neighbour resampling, wherever a CT
    # voxel centre lies within the PET voxel centres (beyond them nibabel gives 0, the SEG the edge voxel).
    ct_grid = nib.load(tmp_path / "r.nii.gz")
    expected = np.asarray(resample_from_to(mask_image, ct_grid, order=0).dataobj)
    voxels = np.indices(ct_grid.shape).reshape(3, -1).T
    index = nib.affines.apply_affine(np.linalg.inv(mask_image.affine) @ ct_grid.affine, voxels)
    inside = np.all((index >= 0) & (index <= np.array(mask.shape) - 1), axis=1).reshape(ct_grid.shape)
    assert inside.mean() > 0.9 and rebuilt.shape == (198, 202, 59)
    np.testing.assert_array_equal(rebuilt[inside], expected[inside])


def test_dicom_seg_refusals(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["predict", "--model", "m.ckpt", "--dataset", str(tmp_path), "--out", str(tmp_path), "--dicom-seg"],
    )
    assert (
        result.exit_code == 1
        and "--dicom-seg needs --ct-dicom/--pet-dicom, or --source-dicom" in result.output
    )
    far = np.eye(4)
    far[:3, 3] = 1e5  # metres away from the scan
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), far), tmp_path / "far.nii.gz")
    with pytest.raises(ValueError, match=r"far\.nii\.gz: the mask lies outside the series"):
        write_dicom_seg(tmp_path / "far.nii.gz", CROPPED / "PET" / "dicom" / "image", tmp_path / "far.dcm")
    assert not (tmp_path / "far.dcm").exists()
