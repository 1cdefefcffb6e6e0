"""Lesion quantification against closed forms."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.evaluation.quantify import (
    CSV_COLUMNS,
    atomic_output,
    case_summary,
    lesion_table,
    sphere_kernel,
    write_lesion_report,
)


def _affine(spacing_mm: tuple[float, float, float], origin_mm: tuple[float, float, float]) -> np.ndarray:
    affine = np.diag([*spacing_mm, 1.0])
    affine[:3, 3] = origin_mm
    return affine


def test_cube_volume_suv_tlg_and_centroid_are_exact() -> None:
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[4:8, 5:9, 6:10] = True
    pet = np.ones(mask.shape)
    pet[mask] = 5.0
    pet[5, 6, 7] = 9.0
    affine = _affine((2.0, 2.0, 2.0), (-10.0, 20.0, 30.0))

    (lesion,) = lesion_table(mask, pet, affine)

    assert lesion.n_voxels == 64
    assert lesion.volume_ml == pytest.approx(64 * 8 / 1000)
    assert lesion.suv_max == 9.0
    assert lesion.suv_mean == pytest.approx((63 * 5 + 9) / 64)
    assert lesion.tlg == pytest.approx(lesion.suv_mean * lesion.volume_ml)
    np.testing.assert_allclose(lesion.centroid_mm, (-10 + 2 * 5.5, 20 + 2 * 6.5, 30 + 2 * 7.5))


def test_centroid_follows_a_non_diagonal_affine() -> None:
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1, 2, 3] = True
    affine = np.array([[0, -3.0, 0, 100], [2.0, 0, 0, -50], [0, 0, -4.0, 7], [0, 0, 0, 1]])

    (lesion,) = lesion_table(mask, np.ones(mask.shape), affine)

    np.testing.assert_allclose(lesion.centroid_mm, (100 - 6, -50 + 2, 7 - 12))
    assert lesion.volume_ml == pytest.approx(24 / 1000)


def test_anisotropic_spacing_volume() -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[2:5, 2:4, 2:7] = True  # 30 voxels
    (lesion,) = lesion_table(mask, np.ones(mask.shape), _affine((0.8, 1.5, 3.3), (0, 0, 0)))
    assert lesion.volume_ml == pytest.approx(30 * 0.8 * 1.5 * 3.3 / 1000)


def test_corner_contact_is_two_lesions_edge_contact_is_one() -> None:
    corner = np.zeros((8, 8, 8), dtype=bool)
    corner[1:3, 1:3, 1:3] = True
    corner[3:5, 3:5, 3:5] = True  # touches the first block at one corner only (26- not 18-connected)
    edge = np.zeros((8, 8, 8), dtype=bool)
    edge[1:3, 1:3, 1:3] = True
    edge[3:5, 3:5, 1:3] = True  # shares an edge along z (18-connected)
    pet = np.ones(corner.shape)
    affine = np.eye(4)

    assert len(lesion_table(corner, pet, affine)) == 2
    assert len(lesion_table(edge, pet, affine)) == 1


def test_lesions_are_ranked_by_volume() -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[1, 1, 1] = True
    mask[6:9, 6:9, 6:9] = True
    lesions = lesion_table(mask, np.ones(mask.shape), np.eye(4))
    assert [lesion.lesion_id for lesion in lesions] == [1, 2]
    assert [lesion.n_voxels for lesion in lesions] == [27, 1]


def test_sphere_kernel_counts_lattice_points() -> None:
    # Radius 6.2 mm on a 2 mm grid: offsets with i²+j²+k² <= 9.61, i.e. <= 9: 123 points.
    assert sphere_kernel((2.0, 2.0, 2.0)).sum() == 123
    assert sphere_kernel((2.0, 2.0, 2.0)).shape == (7, 7, 7)
    # Spacing coarser than the radius: the sphere is the voxel itself.
    assert sphere_kernel((7.0, 7.0, 7.0)).sum() == 1
    assert sphere_kernel((4.0, 4.0, 7.0)).shape == (3, 3, 1)


def test_suv_peak_of_uniform_region_is_its_value() -> None:
    pet = np.full((16, 16, 16), 3.5)
    mask = np.zeros(pet.shape, dtype=bool)
    mask[6:10, 6:10, 6:10] = True
    (lesion,) = lesion_table(mask, pet, _affine((2.0, 2.0, 2.0), (0, 0, 0)))
    assert lesion.suv_peak == pytest.approx(3.5, rel=1e-9)


def test_suv_peak_of_single_hot_voxel_is_value_times_sphere_fraction() -> None:
    pet = np.zeros((15, 15, 15))
    pet[7, 7, 7] = 10.0
    mask = pet > 0
    (lesion,) = lesion_table(mask, pet, _affine((2.0, 2.0, 2.0), (0, 0, 0)))
    assert lesion.suv_peak == pytest.approx(10.0 / 123, rel=1e-9)
    assert lesion.suv_max == 10.0


def test_suv_peak_at_image_border_averages_inside_voxels_only() -> None:
    pet = np.full((5, 5, 5), 2.0)
    mask = np.zeros(pet.shape, dtype=bool)
    mask[0, 0, 0] = True
    (lesion,) = lesion_table(mask, pet, _affine((2.0, 2.0, 2.0), (0, 0, 0)))
    assert lesion.suv_peak == pytest.approx(2.0, rel=1e-9)


def test_empty_mask_gives_no_lesions_and_empty_summary() -> None:
    lesions = lesion_table(np.zeros((4, 4, 4), bool), np.ones((4, 4, 4)), np.eye(4))
    assert lesions == []
    assert case_summary(lesions) == {
        "lesion_count": 0,
        "total_mtv_ml": 0.0,
        "total_tlg": 0.0,
        "suv_max": None,
        "classes": {},
    }
    gtvn = {"label": 2, "lesion_count": 0, "mtv_ml": 0.0, "tlg": 0.0, "suv_max": None}
    assert case_summary(lesions, {0: "background", 2: "GTVn"})["classes"] == {"GTVn": gtvn}


def test_lesions_are_per_class_with_totals_per_class() -> None:
    # a GTVp block and a GTVn block that touch face to face: two lesions, one per class
    mask = np.zeros((8, 8, 8), dtype=np.uint8)
    mask[1:4, 1:4, 1:4] = 1  # 27 voxels
    mask[4:6, 1:3, 1:3] = 2  # 8 voxels, touching the primary
    mask[7, 7, 7] = 2  # 1 voxel, a second node
    pet = np.where(mask == 1, 6.0, np.where(mask == 2, 3.0, 1.0))
    pet[2, 2, 2] = 9.0
    lesions = lesion_table(mask, pet, _affine((2.0, 2.0, 2.0), (0, 0, 0)))
    assert [(lesion.class_label, lesion.n_voxels) for lesion in lesions] == [(1, 27), (2, 8), (2, 1)]
    summary = case_summary(lesions, {0: "background", 1: "GTVp", 2: "GTVn"})
    voxel_ml = 0.008
    gtvp, gtvn = summary["classes"]["GTVp"], summary["classes"]["GTVn"]
    assert (gtvp["lesion_count"], gtvn["lesion_count"], summary["lesion_count"]) == (1, 2, 3)
    assert gtvp["mtv_ml"] == pytest.approx(27 * voxel_ml) and gtvn["mtv_ml"] == pytest.approx(9 * voxel_ml)
    assert gtvp["suv_max"] == 9.0 and gtvn["suv_max"] == 3.0
    assert gtvp["tlg"] == pytest.approx((26 * 6.0 + 9.0) * voxel_ml)
    assert gtvn["tlg"] == pytest.approx(9 * 3.0 * voxel_ml)
    assert summary["total_tlg"] == pytest.approx(gtvp["tlg"] + gtvn["tlg"])
    with pytest.raises(ValueError, match="bool or integer classes"):
        lesion_table(mask.astype(float), pet, np.eye(4))


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="same shape"):
        lesion_table(np.zeros((4, 4, 4), bool), np.ones((4, 4, 5)), np.eye(4))


def test_report_round_trip(tmp_path: Path) -> None:
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    mask[6:9, 6:9, 6:9] = True
    pet = np.where(mask, 4.0, 1.0)
    lesions = lesion_table(mask, pet, np.eye(4))

    write_lesion_report(lesions, tmp_path / "c_lesions.csv", tmp_path / "c_summary.json", "c")

    with (tmp_path / "c_lesions.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [float(row["volume_ml"]) for row in rows] == [0.027, 0.008]
    summary = json.loads((tmp_path / "c_summary.json").read_text())
    assert summary["case_id"] == "c"
    assert summary["lesion_count"] == 2
    assert summary["total_mtv_ml"] == pytest.approx(0.035)
    assert summary["total_tlg"] == pytest.approx(0.035 * 4.0)
    assert summary["suv_max"] == 4.0
    assert len(summary["lesions"]) == 2
    assert [row["class_label"] for row in rows] == ["1", "1"]
    assert summary["classes"] == {"label1": {"label": 1, "lesion_count": 2, "mtv_ml": pytest.approx(0.035),
                                             "tlg": pytest.approx(0.14), "suv_max": 4.0}}  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_lesions.csv", "c_summary.json"]


def test_atomic_output_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("case", "n_voxels", "suv_max", "suv_mean"),
    [("STS_001", 5095, 7.9107, 2.5551), ("STS_002", 555, 21.6757, 7.3696), ("STS_003", 817, 10.2653, 5.8163)],
)
def test_real_gtv_statistics_match_the_fixture_notes(
    case: str, n_voxels: int, suv_max: float, suv_mean: float, shared_data: Path
) -> None:
    """Soft-tissue sarcoma PET with its GTV (``sts-petct/SOURCE.md`` lists these figures)."""
    folder = shared_data / "sts-petct" / "sts_images" / case / "PET"
    pet = nib.load(folder / "nifti" / "image" / "image.nii.gz")
    mask = np.asarray(nib.load(folder / "nifti" / "mask" / "mask.nii.gz").dataobj) > 0

    lesions = lesion_table(mask, pet.get_fdata(), pet.affine)

    assert sum(lesion.n_voxels for lesion in lesions) == n_voxels
    assert max(lesion.suv_max for lesion in lesions) == pytest.approx(suv_max, abs=1e-4)
    assert lesions[0].suv_mean == pytest.approx(suv_mean, abs=1e-4)
    assert lesions[0].suv_mean <= lesions[0].suv_peak <= lesions[0].suv_max
    assert case_summary(lesions)["total_mtv_ml"] == pytest.approx(
        n_voxels * np.prod(pet.header.get_zooms()) / 1000
    )
