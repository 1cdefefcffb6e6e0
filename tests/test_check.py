"""Tests of h2aseg.data.check: one tiny dataset per defect, and clean datasets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from rich.table import Table

from h2aseg.data.check import Problem, check_dataset, format_problems

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def _write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _volumes(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8 x 8 x 8 CT (HU), PET (SUV) and label (0/1) of a plausible case."""
    rng = np.random.default_rng(seed)
    ct_hu = rng.uniform(-1000.0, 400.0, (8, 8, 8)).astype(np.float32)
    pet_suv = rng.uniform(0.0, 3.0, (8, 8, 8)).astype(np.float32)
    label = np.zeros((8, 8, 8), np.uint8)
    label[3:5, 3:5, 3:5] = 1
    pet_suv[label > 0] = 12.0
    return ct_hu, pet_suv, label


def _flat_dataset(root: Path, n_cases: int = 2) -> Path:
    for index in range(n_cases):
        ct_hu, pet_suv, label = _volumes(index)
        _write(root / f"case{index}_ct.nii.gz", ct_hu)
        _write(root / f"case{index}_pet.nii.gz", pet_suv)
        _write(root / f"case{index}_seg.nii.gz", label)
    return root


def _only_problem(problems: list[Problem], file_name: str, *words: str) -> Problem:
    """The single problem found; it must name ``file_name`` and contain every word."""
    assert len(problems) == 1, problems
    problem = problems[0]
    assert Path(problem.file).name == file_name, problem
    for word in words:
        assert word in problem.message, problem
    assert "\n" not in str(problem)
    return problem


def test_clean_flat_dataset_has_no_problems(tmp_path: Path) -> None:
    assert check_dataset(_flat_dataset(tmp_path)) == []


def test_clean_nnunet_dataset_has_no_problems(tmp_path: Path) -> None:
    for index in range(2):
        ct_hu, pet_suv, label = _volumes(index)
        _write(tmp_path / "imagesTr" / f"p{index}_0000.nii.gz", ct_hu)
        _write(tmp_path / "imagesTr" / f"p{index}_0001.nii.gz", pet_suv)
        _write(tmp_path / "labelsTr" / f"p{index}.nii.gz", label)
    description = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1}}
    (tmp_path / "dataset.json").write_text(json.dumps(description))
    assert check_dataset(tmp_path, layout="nnunet") == []


def test_hecktor_labels_and_ct_grid_label_are_accepted(tmp_path: Path) -> None:
    ct_affine = AFFINE.copy()  # label on the CT grid, shifted half a voxel from the PET's
    ct_affine[:3, 3] = [1.0, 1.0, 1.5]
    ct_hu, pet_suv, label = _volumes(0)
    label[1, 1, 1] = 2
    _write(tmp_path / "imagesTr" / "CHUM-001__CT.nii.gz", ct_hu, ct_affine)
    _write(tmp_path / "imagesTr" / "CHUM-001__PT.nii.gz", pet_suv)
    _write(tmp_path / "labelsTr" / "CHUM-001.nii.gz", label, ct_affine)
    assert check_dataset(tmp_path) == []
    problem = _only_problem(check_dataset(tmp_path, labels={0, 1}), "CHUM-001.nii.gz", "label values {2}")
    assert problem.case_id == "CHUM-001"


def _missing_pet(root: Path) -> None:
    (root / "case1_pet.nii.gz").unlink()


def _no_overlap(root: Path) -> None:
    shifted = AFFINE.copy()
    shifted[:3, 3] = [500.0, 0.0, 0.0]
    _write(root / "case1_pet.nii.gz", _volumes(1)[1], shifted)


def _label_on_other_grid(root: Path) -> None:
    _write(root / "case1_seg.nii.gz", np.zeros((6, 6, 6), np.uint8))


def _four_dimensional_pet(root: Path) -> None:
    _write(root / "case1_pet.nii.gz", np.ones((8, 8, 8, 2), np.float32))


def _unexpected_label(root: Path) -> None:
    label = _volumes(1)[2]
    label[0, 0, 0] = 3
    _write(root / "case1_seg.nii.gz", label)


def _nan_in_ct(root: Path) -> None:
    ct_hu = _volumes(1)[0]
    ct_hu[2, 2, 2] = np.nan
    ct_hu[2, 2, 3] = np.inf
    _write(root / "case1_ct.nii.gz", ct_hu)


def _negative_pet(root: Path) -> None:
    pet_suv = _volumes(1)[1]
    pet_suv[0, 0, 0] = -4.0
    _write(root / "case1_pet.nii.gz", pet_suv)


def _zero_pet(root: Path) -> None:
    _write(root / "case1_pet.nii.gz", np.zeros((8, 8, 8), np.float32))


def _absurd_suv(root: Path) -> None:
    pet_suv = _volumes(1)[1]
    pet_suv[4, 4, 4] = 250.0
    _write(root / "case1_pet.nii.gz", pet_suv)


def _pet_in_bqml(root: Path) -> None:
    _write(root / "case1_pet.nii.gz", _volumes(1)[1] * 5000.0)


def _two_dimensional_ct(root: Path) -> None:
    _write(root / "case1_ct.nii.gz", np.zeros((8, 8), np.float32) - 1000.0)


def _truncated_ct(root: Path) -> None:
    path = root / "case1_ct.nii.gz"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _garbage_pet(root: Path) -> None:
    (root / "case1_pet.nii.gz").write_bytes(b"not a nifti file at all")


@pytest.mark.parametrize(
    ("defect", "file_name", "words"),
    [
        (_missing_pet, "case1_pet.nii.gz", ("missing PET file",)),
        (_no_overlap, "case1_ct.nii.gz", ("do not overlap", "case1_pet.nii.gz")),
        (_label_on_other_grid, "case1_seg.nii.gz", ("label grid", "matches neither PET nor CT")),
        (_four_dimensional_pet, "case1_pet.nii.gz", ("4 dimensions",)),
        (_unexpected_label, "case1_seg.nii.gz", ("label values {3}", "[0, 1]")),
        (_nan_in_ct, "case1_ct.nii.gz", ("2 NaN or infinite",)),
        (_negative_pet, "case1_pet.nii.gz", ("negative values", "-4")),
        (_zero_pet, "case1_pet.nii.gz", ("all zero",)),
        (_absurd_suv, "case1_pet.nii.gz", ("250", "implausible")),
        (_pet_in_bqml, "case1_pet.nii.gz", ("Bq/mL",)),
        (_two_dimensional_ct, "case1_ct.nii.gz", ("2-D",)),
        (_truncated_ct, "case1_ct.nii.gz", ("corrupt",)),
        (_garbage_pet, "case1_pet.nii.gz", ("unreadable",)),
    ],
    ids=lambda value: value.__name__.strip("_") if callable(value) else "",
)
def test_each_defect_is_reported_once_naming_the_file(
    tmp_path: Path, defect: Callable[[Path], None], file_name: str, words: tuple[str, ...]
) -> None:
    root = _flat_dataset(tmp_path)
    defect(root)
    problem = _only_problem(check_dataset(root, layout="flat"), file_name, *words)
    assert problem.case_id == "case1"


def test_unrecognised_folder_is_one_problem(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    problem = _only_problem(check_dataset(tmp_path), tmp_path.name, "not a recognised dataset layout")
    assert problem.case_id == ""


def test_unlabelled_dataset_is_clean_but_a_lone_missing_label_is_not(tmp_path: Path) -> None:
    root = _flat_dataset(tmp_path)
    (root / "case0_seg.nii.gz").unlink()
    _only_problem(check_dataset(root), "case0_seg.nii.gz", "missing label file")
    (root / "case1_seg.nii.gz").unlink()
    assert check_dataset(root) == []


def test_format_problems_gives_one_row_per_problem() -> None:
    problems = [Problem("a", "/x/a_pet.nii.gz", "PET is all zero"), Problem("b", "/x/b_ct.nii.gz", "2-D")]
    table = format_problems(problems)
    assert isinstance(table, Table) and table.row_count == 2
    assert [column.header for column in table.columns] == ["case", "file", "problem"]
    assert str(problems[0]) == "/x/a_pet.nii.gz: PET is all zero"
