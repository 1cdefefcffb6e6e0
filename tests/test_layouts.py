"""Dataset layouts: write each with the phantom, read it back, detect it, and report broken folders."""

from __future__ import annotations

import collections
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.data.layouts import (
    Case,
    case_paths,
    detect_layout,
    label_mapping,
    list_case_files,
    read_dataset,
)
from h2aseg.phantom.cohort import write_cohort
from h2aseg.phantom.sampling import PRESETS
from h2aseg.phantom.shapes import Grid

# Coarse grids keep every test well under a second.
TINY = dataclasses.replace(
    PRESETS["small"], ct_grid=Grid((36, 32, 32), (8.0, 8.0, 8.0), (-140.0, -124.0, -380.0))
)
TINY_HECKTOR = dataclasses.replace(
    PRESETS["hecktor"],
    ct_grid=Grid((56, 56, 50), (4.0, 4.0, 4.0), (-110.0, -110.0, -250.0)),
    pet_grid=Grid((20, 20, 16), (16.0, 16.0, 16.0), (-152.0, -152.0, -290.0)),
)


def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.mark.parametrize("layout", ["autopet", "nnunet", "hecktor", "flat"])
def test_written_layout_reads_back_as_the_same_cases(tmp_path: Path, layout: str) -> None:
    written = write_cohort(tmp_path, n_cases=5, seed=3, layout=layout, preset=TINY)  # type: ignore[arg-type]
    assert detect_layout(tmp_path) == layout
    assert read_dataset(tmp_path) == sorted(written, key=lambda case: case.case_id)
    assert read_dataset(tmp_path, layout=layout, require_labels=True) == read_dataset(tmp_path)
    assert all(case.label is not None and case.label.is_file() for case in written)


def test_autopet_layout_groups_studies_by_patient(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path, n_cases=5, seed=1, layout="autopet", preset=TINY)
    studies = collections.Counter(case.patient_id for case in cases)
    assert sorted(studies.values()) == [1, 1, 1, 2]  # the fourth patient has two studies
    for case in cases:
        assert (
            case.ct.name == "CTres.nii.gz"
            and case.pet.name == "SUV.nii.gz"
            and case.label.name == "SEG.nii.gz"
        )
        assert case.ct.parent.parent.name == case.patient_id
        assert case.case_id == f"{case.patient_id}_{case.ct.parent.name}"


def test_nnunet_dataset_json_is_valid(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path, n_cases=5, seed=2, layout="nnunet", preset=TINY)
    description = json.loads((tmp_path / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "CT", "1": "PET"}
    assert description["labels"] == {"background": 0, "lesion": 1}
    assert description["numTraining"] == 5 and description["file_ending"] == ".nii.gz"
    assert len(list((tmp_path / "imagesTr").glob("*_0000.nii.gz"))) == 5
    assert len(list((tmp_path / "labelsTr").glob("*.nii.gz"))) == 5
    assert {case.case_id: case.patient_id for case in cases} == description["patients"]
    assert len(set(description["patients"].values())) == 4


def test_hecktor_layout_keeps_native_grids(tmp_path: Path) -> None:
    (case,) = write_cohort(tmp_path, n_cases=1, seed=4, layout="hecktor", preset=TINY_HECKTOR)
    assert case.case_id == case.patient_id == "CHUM-001"
    assert case.ct.name == "CHUM-001__CT.nii.gz" and case.pet.name == "CHUM-001__PT.nii.gz"
    ct, pet, label = (nib.load(path) for path in (case.ct, case.pet, case.label))
    assert ct.shape != pet.shape and not np.allclose(ct.affine, pet.affine)
    assert label.shape == ct.shape and np.allclose(label.affine, ct.affine)
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2}


def test_other_layouts_put_the_hecktor_ct_on_the_pet_grid(tmp_path: Path) -> None:
    (case,) = write_cohort(tmp_path, n_cases=1, seed=4, layout="flat", preset=TINY_HECKTOR)
    ct, pet, label = (nib.load(path) for path in (case.ct, case.pet, case.label))
    assert ct.shape == pet.shape == label.shape
    assert np.allclose(ct.affine, pet.affine) and np.allclose(label.affine, pet.affine)


def test_real_world_names_are_parsed(tmp_path: Path) -> None:
    study = (
        tmp_path / "autopet" / "PETCT_0af7ffe12a" / "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445"
    )
    _touch(study / "CTres.nii.gz", study / "SUV.nii.gz", study / "SEG.nii.gz", study / "CT.nii.gz")
    (case,) = read_dataset(tmp_path / "autopet")
    assert case.patient_id == "PETCT_0af7ffe12a" and case.case_id == f"PETCT_0af7ffe12a_{study.name}"

    hecktor = tmp_path / "hecktor"
    _touch(hecktor / "imagesTr" / "CHUM-001__CT.nii.gz", hecktor / "imagesTr" / "CHUM-001__PT.nii.gz")
    _touch(hecktor / "imagesTr" / "MDA-104__CT.nii", hecktor / "imagesTr" / "MDA-104__PT.nii")
    _touch(hecktor / "labelsTr" / "CHUM-001.nii.gz")
    cases = read_dataset(hecktor)
    assert [c.patient_id for c in cases] == ["CHUM-001", "MDA-104"]
    assert cases[0].label is not None and cases[1].label is None and cases[1].ct.suffix == ".nii"


def test_missing_partner_file_is_reported_and_raises(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path, n_cases=2, seed=0, layout="flat", preset=TINY)
    cases[1].pet.unlink()
    files = list_case_files(tmp_path, "flat")
    assert [f.missing for f in files] == [frozenset(), frozenset({"pet"})]
    with pytest.raises(ValueError, match=r"phantom_001_pet\.nii\.gz: missing PET"):
        read_dataset(tmp_path)


def test_missing_label_is_none_unless_required(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path, n_cases=1, seed=0, layout="nnunet", preset=TINY)
    cases[0].label.unlink()
    assert read_dataset(tmp_path)[0].label is None
    with pytest.raises(ValueError, match="missing label"):
        read_dataset(tmp_path, require_labels=True)


def test_unrecognisable_folders_raise(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(ValueError, match="not a recognised dataset layout"):
        read_dataset(tmp_path)
    with pytest.raises(ValueError, match="no such dataset folder"):
        read_dataset(tmp_path / "absent")
    with pytest.raises(ValueError, match="unknown layout"):
        read_dataset(tmp_path, layout="bids")
    (tmp_path / "empty" / "imagesTr").mkdir(parents=True)
    with pytest.raises(ValueError, match="no cases found"):
        read_dataset(tmp_path / "empty", layout="hecktor")


def test_nnunet_channels_must_be_ct_then_pet(tmp_path: Path) -> None:
    write_cohort(tmp_path, n_cases=1, seed=0, layout="nnunet", preset=TINY)
    path = tmp_path / "dataset.json"
    description = json.loads(path.read_text())
    path.write_text(json.dumps({**description, "channel_names": {"0": "PET", "1": "CT"}}))
    with pytest.raises(ValueError, match="channel 0 must be CT"):
        read_dataset(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_dataset(tmp_path)


def test_case_as_dict_is_the_monai_input() -> None:
    case = Case("a_1", "a", Path("/d/ct.nii.gz"), Path("/d/pet.nii.gz"))
    assert case.as_dict() == {
        "case_id": "a_1",
        "patient_id": "a",
        "ct": "/d/ct.nii.gz",
        "pet": "/d/pet.nii.gz",
    }
    labelled = dataclasses.replace(case, label=Path("/d/seg.nii.gz"))
    assert labelled.as_dict()["label"] == "/d/seg.nii.gz"


def test_case_paths_and_label_mapping(tmp_path: Path) -> None:
    assert case_paths(tmp_path, "flat", "x")[2] == tmp_path / "x_seg.nii.gz"
    with pytest.raises(ValueError, match="patient id"):
        case_paths(tmp_path, "autopet", "x")
    assert label_mapping("hecktor", "binary") == {0: 0, 1: 1, 2: 1}
    assert label_mapping("hecktor", "multiclass") == {0: 0, 1: 1, 2: 2}
    assert label_mapping("autopet", "binary") == {0: 0, 1: 1}
    with pytest.raises(ValueError, match="multiclass"):
        label_mapping("autopet", "multiclass")
