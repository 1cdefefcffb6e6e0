"""RTSTRUCT to mask: known squares, circle and hole, grid directions, errors, real GTV contours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from h2aseg.data.dicom.rtstruct import (
    FRAME_OF_REFERENCE_KEY,
    RT_STRUCTURE_SET_STORAGE,
    RtStructError,
    physical_to_continuous_index,
    roi_names,
    rtstruct_to_mask,
)

FRAME_UID = "1.2.826.0.1.3680043.8.498.1"


def write_rtstruct(path: Path, rois: dict[str, list[np.ndarray]], frame_uid: str = FRAME_UID) -> Path:
    """Write an RTSTRUCT with one ROI per name, each a list of ``(N, 3)`` LPS mm closed contours."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = number, name, frame_uid
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = []
        for points in contours:
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{value:.6g}" for value in np.asarray(points).ravel()]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)
    return path


def reference_grid(
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1), origin: tuple[float, ...] = (-8, -8, 0)
) -> sitk.Image:
    """16 x 16 x 3 voxels of 1 x 1 x 2 mm; by default x, y in [-8, 7] mm and z in {0, 2, 4} mm."""
    image = sitk.Image(16, 16, 3, sitk.sitkUInt8)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetDirection(direction)
    image.SetOrigin(origin)
    image.SetMetaData(FRAME_OF_REFERENCE_KEY, FRAME_UID)
    return image


def square(low: float, high: float, z_mm: float) -> np.ndarray:
    return np.array([[low, low, z_mm], [high, low, z_mm], [high, high, z_mm], [low, high, z_mm]])


def circle(radius: float, z_mm: float, vertices: int = 200) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle), np.full(vertices, z_mm)])


def test_square_circle_and_hole_fill_exactly(tmp_path: Path) -> None:
    rois = {
        "Square": [square(-5.5, -1.5, 2.0)],
        "Circle": [circle(4.3, 4.0)],
        "Ring": [square(-5.5, 4.5, 0.0), square(-3.5, 0.5, 0.0)],
    }
    path = write_rtstruct(tmp_path / "rs.dcm", rois)
    reference = reference_grid()
    square_zyx = sitk.GetArrayFromImage(rtstruct_to_mask(path, "square", reference))
    assert square_zyx.dtype == np.uint8 and square_zyx.sum() == 16
    assert square_zyx[1, 3:7, 3:7].all()
    circle_zyx = sitk.GetArrayFromImage(rtstruct_to_mask(path, "CIRCLE", reference))
    offsets = np.arange(16) - 8
    expected = (offsets[None, :] ** 2 + offsets[:, None] ** 2) <= 4.3**2
    assert np.array_equal(circle_zyx[2].astype(bool), expected) and circle_zyx[:2].sum() == 0
    ring_zyx = sitk.GetArrayFromImage(rtstruct_to_mask(path, "Ring", reference))
    assert ring_zyx.sum() == 100 - 16 and ring_zyx[0, 6, 6] == 0 and ring_zyx[0, 3, 3] == 1


def test_mask_is_the_same_physical_region_on_a_flipped_grid(tmp_path: Path) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", {"Square": [square(-5.5, -1.5, 2.0)]})
    identity = reference_grid()
    flipped = reference_grid(direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1), origin=(7, -8, 4))
    mask_flipped = rtstruct_to_mask(path, "Square", flipped)
    assert sitk.GetArrayFromImage(mask_flipped).sum() == 16
    back = sitk.Resample(mask_flipped, identity, sitk.Transform(), sitk.sitkNearestNeighbor)
    direct = rtstruct_to_mask(path, "Square", identity)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(direct))


def test_physical_to_continuous_index_inverts_sitk() -> None:
    reference = reference_grid(direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    indices = np.array([[0.0, 0.0, 0.0], [3.5, 7.25, 1.0], [15.0, 2.0, 2.0]])
    points = np.array([reference.TransformContinuousIndexToPhysicalPoint(tuple(row)) for row in indices])
    assert np.allclose(physical_to_continuous_index(points, reference), indices)


def test_errors(tmp_path: Path) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", {"GTV": [square(-5.5, -1.5, 2.0)], "Lung": []})
    assert roi_names(path) == ["GTV", "Lung"]
    with pytest.raises(RtStructError, match=r"rs\.dcm: no ROI named 'CTV'; available: GTV, Lung"):
        rtstruct_to_mask(path, "CTV", reference_grid())
    other = reference_grid()
    other.SetMetaData(FRAME_OF_REFERENCE_KEY, "1.2.3")
    with pytest.raises(RtStructError, match="FrameOfReferenceUID"):
        rtstruct_to_mask(path, "GTV", other)
    oblique = square(-5.5, -1.5, 2.0)
    oblique[:, 2] = [0.0, 1.0, 2.0, 1.0]
    tilted = write_rtstruct(tmp_path / "tilted.dcm", {"GTV": [oblique]})
    with pytest.raises(RtStructError, match="spans"):
        rtstruct_to_mask(tilted, "GTV", reference_grid())
    not_rtstruct = tmp_path / "plain.dcm"
    dataset = pydicom.dcmread(path)
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.save_as(not_rtstruct)
    with pytest.raises(RtStructError, match="not an RT Structure Set"):
        roi_names(not_rtstruct)


def test_contour_planes_off_the_grid_are_sampled_not_summed(tmp_path: Path) -> None:
    """Dense planes (every 1 mm on 2 mm slices) are sampled, never XOR-ed; sparse planes fill between."""
    odd_planes = [square(-7.5, 6.5, z_mm) for z_mm in (1.0, 3.0)]
    even_planes = [square(-5.5, -5.5 + size, z_mm) for size, z_mm in ((2, 0.0), (3, 2.0), (4, 4.0))]
    dense = write_rtstruct(tmp_path / "dense.dcm", {"GTV": odd_planes + even_planes})
    sums = sitk.GetArrayFromImage(rtstruct_to_mask(dense, "GTV", reference_grid())).sum(axis=(1, 2))
    assert sums.tolist() == [4, 9, 16]
    sparse = write_rtstruct(
        tmp_path / "sparse.dcm", {"GTV": [square(-5.5, -3.5, 0.0), square(-5.5, -2.5, 4.0)]}
    )
    fine_grid = sitk.Image(16, 16, 6, sitk.sitkUInt8)  # 1 mm slices, z = 0 ... 5 mm
    fine_grid.SetOrigin((-8, -8, 0))
    sums = sitk.GetArrayFromImage(rtstruct_to_mask(sparse, "GTV", fine_grid)).sum(axis=(1, 2))
    assert sums.tolist() == [4, 4, 4, 9, 9, 9]  # nearest plane, ties to the lower; reach 2 mm


def test_contours_outside_the_grid_give_an_empty_mask(tmp_path: Path) -> None:
    path = write_rtstruct(tmp_path / "rs.dcm", {"Far": [square(-5.5, -1.5, 40.0)]})
    assert sitk.GetArrayFromImage(rtstruct_to_mask(path, "Far", reference_grid())).sum() == 0


@pytest.mark.parametrize("modality", ["PET", "CT"])
def test_sts_gtv_matches_mirp_mask(modality: str, shared_data: Path) -> None:
    """MIRP's voxelised GTV (NIfTI) of the cropped STS_002 images, same grid: Dice 1.0 measured."""
    case = shared_data / "sts-petct" / "sts_images" / "STS_002" / modality
    rtstruct = case / "dicom" / "mask" / "RS.dcm"
    image = pydicom.dcmread(next((case / "dicom" / "image").iterdir()), stop_before_pixels=True)
    reference_mask = sitk.ReadImage(str(case / "nifti" / "mask" / "mask.nii.gz"))
    reference_mask.SetMetaData(FRAME_OF_REFERENCE_KEY, str(image.FrameOfReferenceUID))
    ours = sitk.GetArrayFromImage(rtstruct_to_mask(rtstruct, f"GTV_Mass_{modality}", reference_mask))
    theirs = sitk.GetArrayFromImage(reference_mask).astype(bool)
    dice = 2 * np.logical_and(ours, theirs).sum() / (ours.sum() + theirs.sum())
    assert dice > 0.99
