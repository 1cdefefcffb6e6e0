"""evaluate_folder round trip on tiny NIfTI masks: matching, summary rules, CSV/JSON contents, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.evaluation.evaluate import evaluate_folder, find_truth_masks, format_summary_table
from h2aseg.evaluation.metrics import compute_case_metrics

SPACING = (2.0, 3.0, 4.0)
AFFINE = np.diag([*SPACING, 1.0])
SHAPE = (8, 8, 6)
KEYS = ["classes", "n_cases", "dice", "hd95", "precision", "recall", "fpv_ml", "fnv_ml", "dice_agg"]


def save(mask: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), path)


def cohort() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case -> (prediction, truth): a partial hit, a lesion-free case with a false positive, a miss."""
    truth_a = np.zeros(SHAPE, dtype=np.uint8)
    truth_a[1:4, 1:4, 1:3] = 1
    pred_a = np.zeros(SHAPE, dtype=np.uint8)
    pred_a[2:4, 1:4, 1:3] = 1
    pred_a[7, 7, 5] = 1
    pred_b = np.zeros(SHAPE, dtype=np.uint8)
    pred_b[5:7, 5:7, 4] = 1
    truth_c = np.zeros(SHAPE, dtype=np.uint8)
    truth_c[0:2, 6:8, 0:2] = 1
    return {
        "a": (pred_a, truth_a),
        "b": (pred_b, np.zeros(SHAPE, dtype=np.uint8)),
        "c": (np.zeros(SHAPE, dtype=np.uint8), truth_c),
    }


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    truth_names = {"a": "a.nii.gz", "b": "b_seg.nii.gz", "c": "c_label.nii.gz"}
    for case_id, (pred, truth) in cohort().items():
        save(pred, pred_dir / f"{case_id}_seg.nii.gz")
        save(truth, gt_dir / truth_names[case_id])
    save(np.ones(SHAPE), pred_dir / "a_prob.nii.gz")  # not a prediction mask
    save(np.ones(SHAPE), pred_dir / "extra_seg.nii.gz")  # no truth: ignored
    return pred_dir, gt_dir


def test_round_trip_summary_csv_json(folders: tuple[Path, Path], tmp_path: Path) -> None:
    pred_dir, gt_dir = folders
    out_dir = tmp_path / "out"
    summary = evaluate_folder(pred_dir, gt_dir, out_dir)
    expected = {case_id: compute_case_metrics(p, t, SPACING) for case_id, (p, t) in cohort().items()}
    a = expected["a"]

    assert list(summary) == KEYS
    assert summary["n_cases"] == 3 and list(summary["classes"]) == ["lesion"]
    assert summary["classes"]["lesion"] == {"label": 1, **{key: summary[key] for key in KEYS[2:]}}
    # by hand: a has |G| = 18, |P| = 12 + 1, |P ∩ G| = 12
    assert a.dice == pytest.approx(24 / 31)
    half_dice, half_precision = 12 / 31, 12 / 13 / 2  # mean and std of {x, 0} are both x / 2
    assert summary["dice"] == {"mean": pytest.approx(half_dice), "std": pytest.approx(half_dice), "n": 2}
    assert summary["hd95"]["n"] == 2
    assert summary["hd95"]["mean"] == pytest.approx((a.hd95_mm + expected["c"].hd95_mm) / 2)
    precision = {"mean": pytest.approx(half_precision), "std": pytest.approx(half_precision), "n": 2}
    assert summary["precision"] == precision
    assert summary["recall"]["n"] == 2 and summary["recall"]["mean"] == pytest.approx((12 / 18 + 0) / 2)
    voxel_ml = 0.024
    assert summary["fpv_ml"]["n"] == 3
    assert summary["fpv_ml"]["mean"] == pytest.approx((1 + 4 + 0) * voxel_ml / 3)
    assert summary["fnv_ml"]["n"] == 2
    assert summary["fnv_ml"]["mean"] == pytest.approx((0 + 8) * voxel_ml / 2)
    assert summary["dice_agg"] == {"mean": pytest.approx(2 * 12 / (13 + 18 + 4 + 8)), "std": None, "n": 3}

    assert json.loads((out_dir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    with (out_dir / "per_case.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == ["a", "b", "c"]
    for row in rows:
        case = expected[row["case_id"]]
        for field, value in case.as_dict().items():
            assert float(row[f"lesion_{field}"]) == pytest.approx(value, nan_ok=True), (row["case_id"], field)
    assert math.isnan(float(rows[1]["lesion_dice"]))  # no lesion: undefined, never 1.0
    diagonal = math.hypot(7 * 2.0, 7 * 3.0, 5 * 4.0)  # missed lesion: the grid's diagonal in mm
    assert float(rows[2]["lesion_hd95_mm"]) == pytest.approx(diagonal)
    assert not list(out_dir.glob(".tmp-*"))


def test_format_summary_table(folders: tuple[Path, Path]) -> None:
    table = format_summary_table(evaluate_folder(*folders), method="H2ASeg")
    header, rule, row = table.splitlines()
    assert header.startswith("| Method | Class | Dice (%) | HD95 (mm) | Precision (%) | Recall (%)")
    assert rule.count("---") == 10
    assert row.startswith(f"| H2ASeg | lesion (1) | {100 * 12 / 31:.2f} ± {100 * 12 / 31:.2f} |")
    assert row.endswith("| 3 (2) |")


def test_dataset_layout_labels(tmp_path: Path) -> None:
    # flat dataset layout ({case}_ct, {case}_pet, {case}_seg): read_dataset's labels or the mask fallback
    gt_dir = tmp_path / "dataset"
    for case_id, (_, truth) in cohort().items():
        save(truth, gt_dir / f"{case_id}_seg.nii.gz")
        save(np.zeros(SHAPE), gt_dir / f"{case_id}_ct.nii.gz")
        save(np.zeros(SHAPE), gt_dir / f"{case_id}_pet.nii.gz")
    masks = find_truth_masks(gt_dir)
    assert sorted(masks) == ["a", "b", "c"]
    assert masks["c"].name == "c_seg.nii.gz"


def test_missing_prediction_names_the_case(folders: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = folders
    (pred_dir / "c_seg.nii.gz").unlink()
    with pytest.raises(ValueError, match="no prediction for case 'c'"):
        evaluate_folder(pred_dir, gt_dir)


def test_shape_and_affine_mismatch_name_both_files(folders: tuple[Path, Path]) -> None:
    pred_dir, gt_dir = folders
    save(np.zeros((8, 8, 5)), pred_dir / "b_seg.nii.gz")
    with pytest.raises(
        ValueError, match=r"b_seg.nii.gz and .*b_seg.nii.gz are on different grids \(shape \(8, 8, 5\)"
    ):
        evaluate_folder(pred_dir, gt_dir)
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.0
    save(np.zeros(SHAPE), pred_dir / "b_seg.nii.gz", shifted)
    with pytest.raises(
        ValueError, match=r"pred/b_seg.nii.gz and .*gt/b_seg.nii.gz are on different grids \(aff"
    ):
        evaluate_folder(pred_dir, gt_dir)


def test_no_ground_truth(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(ValueError, match="no ground truth found"):
        evaluate_folder(tmp_path / "pred", tmp_path / "gt")
