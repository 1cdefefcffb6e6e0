"""The shared file helpers: atomic writes, NIfTI names, and the one CT/PET overlap rule."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.data.check import check_dataset
from h2aseg.inference.export import check_case_inputs
from h2aseg.io import atomic_output, overlap_problem, strip_nifti_suffix, world_box_mm, write_text_atomic


def test_atomic_output_renames_on_success_and_keeps_the_suffix(tmp_path: Path) -> None:
    target = tmp_path / "case_seg.nii.gz"
    with atomic_output(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith("-case_seg.nii.gz")
        assert temporary.name.startswith(".tmp-")
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), temporary)
    assert [p.name for p in tmp_path.iterdir()] == ["case_seg.nii.gz"]
    assert nib.load(target).get_fdata().sum() == 8


def test_atomic_output_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    target = write_text_atomic(tmp_path / "sub" / "report.json", "old")
    with pytest.raises(RuntimeError), atomic_output(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_nifti_suffix() -> None:
    assert strip_nifti_suffix("a_pet.nii.gz") == "a_pet"
    assert strip_nifti_suffix("a_pet.nii") == "a_pet"
    assert strip_nifti_suffix("a_pet.mha") is None


def _image(shape: tuple[int, int, int], origin_mm: tuple[float, float, float]) -> nib.Nifti1Image:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = origin_mm
    return nib.Nifti1Image(np.zeros(shape, np.float32), affine)


def test_world_box_covers_voxel_edges() -> None:
    box = world_box_mm(_image((4, 4, 1), (10.0, 0.0, 0.0)))
    np.testing.assert_allclose(box, [[9.0, -1.0, -1.0], [17.0, 7.0, 1.0]])


@pytest.mark.parametrize(
    ("pet_origin_z", "overlaps"),
    [
        (0.0, True),  # same box
        (7.0, True),  # one slice of 2 mm thickness overlaps by 1 mm (centres alone: CT z in [0, 6], PET 7)
        (8.0, False),  # boxes touch at z = 7 mm: no shared volume
        (20.0, False),
    ],
)
def test_one_overlap_rule_for_check_data_and_predict(
    tmp_path: Path, pet_origin_z: float, overlaps: bool
) -> None:
    ct, pet = _image((4, 4, 4), (0.0, 0.0, 0.0)), _image((4, 4, 1), (0.0, 0.0, pet_origin_z))
    assert (overlap_problem(ct, pet) is None) is overlaps
    root = tmp_path / "flat"
    root.mkdir()
    nib.save(ct, root / "case1_ct.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), pet.affine), root / "case1_pet.nii.gz")
    rejected_by_check = any("do not overlap" in p.message for p in check_dataset(root, layout="flat"))
    try:
        check_case_inputs(root / "case1_ct.nii.gz", root / "case1_pet.nii.gz")
        rejected_by_predict = False
    except ValueError as error:
        assert "do not overlap in space" in str(error)
        rejected_by_predict = True
    assert rejected_by_check is rejected_by_predict


def test_write_text_atomic_only_if_changed_leaves_an_identical_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "summary.csv"
    write_text_atomic(target, "a\n1\n")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    write_text_atomic(target, "a\n1\n", only_if_changed=True)
    assert target.stat().st_mtime_ns == 1_000_000_000
    write_text_atomic(target, "a\n2\n", only_if_changed=True)
    assert target.read_text() == "a\n2\n" and target.stat().st_mtime_ns != 1_000_000_000
