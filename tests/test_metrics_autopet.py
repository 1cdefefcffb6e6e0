"""autoPET metrics against the organisers' formulas on positive and negative cases.

``organisers_*`` restate the formulas of ``val_script.py`` (lab-midas/autoPET, autoPET I/II) and of
``evaluation_metrics.py`` (autoPET III/IV): masks read with ``get_fdata``, the voxel volume in mL from the
header's ``pixdim``, components of 18-connectivity (``cc3d``) scanned one by one; a predicted component
that shares no voxel with the truth is false positive, a true one that shares none with the prediction is
false negative. autoPET III returns NaN for Dice and FNV when the truth is empty, 0 for FPV when the
prediction is; val_script returns 2·0/|P| = 0 (|P| > 0) or 0/0 = NaN for Dice and 0 for FNV there.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import pytest

from h2aseg.evaluation.evaluate import evaluate_folder
from h2aseg.io import LESION_CONNECTIVITY

Evaluated = tuple[Path, dict[str, dict[str, str]], dict]
AFFINE = np.diag([2.0364, 2.0364, 3.0, 1.0])


def organisers_missed_voxels(mask: np.ndarray, other: np.ndarray) -> int:
    components = cc3d.connected_components(mask.astype(int), connectivity=18)
    missed = 0
    for index in range(1, int(components.max()) + 1):
        component = components == index
        if not (component * other).sum():
            missed += int(component.sum())
    return missed


def organisers_metrics(gt_path: Path, pred_path: Path, version: str) -> tuple[float, float, float]:
    """(Dice, FPV mL, FNV mL) as ``val_script.py`` (``"I"``) or autoPET III's script (``"III"``)."""
    truth_image = nib.load(gt_path)
    truth, pred = truth_image.get_fdata(), nib.load(pred_path).get_fdata()
    pixdim = truth_image.header["pixdim"]
    voxel_ml = pixdim[1] * pixdim[2] * pixdim[3] / 1000
    fpv = organisers_missed_voxels(pred, truth) * voxel_ml
    if version == "III" and truth.sum() == 0:
        return math.nan, fpv, math.nan
    fnv = organisers_missed_voxels(truth, pred) * voxel_ml
    total = truth.sum() + pred.sum()
    dice = 2 * (truth * pred).sum() / total if total else math.nan
    return float(dice), float(fpv), float(fnv)


def autopet_cohort() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case -> (prediction, truth): three positives and three negatives."""
    rng = np.random.default_rng(7)
    shape = (20, 18, 14)
    cases: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    truth = np.zeros(shape, np.uint8)
    truth[3:8, 3:8, 2:6] = 1  # hit partly
    truth[14:16, 2:4, 9:11] = 1  # missed: a false-negative component
    pred = np.zeros(shape, np.uint8)
    pred[5:9, 4:9, 3:7] = 1
    pred[16, 14, 12] = 1  # a false-positive voxel
    pred[17, 15, 13] = 1  # touching it only at a corner: a second component at 18-connectivity
    cases["pos_partial"] = (pred, truth)
    truth = (rng.random(shape) > 0.93).astype(np.uint8)  # many tiny lesions, edge/corner contacts
    pred = (rng.random(shape) > 0.9).astype(np.uint8)
    cases["pos_speckle"] = (pred, truth)
    truth = np.zeros(shape, np.uint8)
    truth[8:12, 8:12, 5:9] = 1
    cases["pos_missed"] = (np.zeros(shape, np.uint8), truth)
    pred = np.zeros(shape, np.uint8)
    pred[1:3, 1:3, 1:3] = 1
    pred[10, 10, 10] = 1
    cases["neg_false_positives"] = (pred, np.zeros(shape, np.uint8))
    cases["neg_clean"] = (np.zeros(shape, np.uint8), np.zeros(shape, np.uint8))
    cases["neg_speckle"] = ((rng.random(shape) > 0.97).astype(np.uint8), np.zeros(shape, np.uint8))
    return cases


@pytest.fixture
def evaluated(tmp_path: Path) -> Evaluated:
    for case_id, (pred, truth) in autopet_cohort().items():
        for folder, mask in (("pred", pred), ("gt", truth)):
            (tmp_path / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(mask, AFFINE), tmp_path / folder / f"{case_id}.nii.gz")
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "gt", tmp_path / "out")
    with (tmp_path / "out" / "per_case.csv").open() as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    return tmp_path, rows, summary


def test_connectivity_is_18() -> None:
    assert LESION_CONNECTIVITY == 18


def test_every_case_equals_autopet_iii(evaluated: Evaluated) -> None:
    root, rows, _ = evaluated
    for case_id, row in rows.items():
        expected = organisers_metrics(
            root / "gt" / f"{case_id}.nii.gz", root / "pred" / f"{case_id}.nii.gz", "III"
        )
        ours = (float(row["lesion_dice"]), float(row["lesion_fpv_ml"]), float(row["lesion_fnv_ml"]))
        assert ours == pytest.approx(expected, abs=1e-6, nan_ok=True), case_id


def test_val_script_agrees_on_positives_and_on_fpv(
    evaluated: Evaluated,
) -> None:
    root, rows, _ = evaluated
    for case_id, row in rows.items():
        dice, fpv, fnv = organisers_metrics(
            root / "gt" / f"{case_id}.nii.gz", root / "pred" / f"{case_id}.nii.gz", "I"
        )
        assert float(row["lesion_fpv_ml"]) == pytest.approx(fpv, abs=1e-6), case_id
        if case_id.startswith("pos"):
            assert float(row["lesion_dice"]) == pytest.approx(dice, abs=1e-6), case_id
            assert float(row["lesion_fnv_ml"]) == pytest.approx(fnv, abs=1e-6), case_id
        else:  # autoPET I gives 0 (or 0/0) where autoPET III and we say undefined; never 1.0
            assert math.isnan(float(row["lesion_dice"])) and math.isnan(float(row["lesion_fnv_ml"]))
            assert fnv == 0.0 and (dice == 0.0 or math.isnan(dice))


def test_hand_values_and_summary(evaluated: Evaluated) -> None:
    _, rows, summary = evaluated
    voxel_ml = 2.0364 * 2.0364 * 3.0 / 1000  # the header stores float32: equal to ~1e-7
    partial = rows["pos_partial"]
    # |G| = 5*5*4 + 2*2*2 = 108, |P| = 4*5*4 + 2 = 82, |P ∩ G| = 3*4*3 = 36 (x 5-7, y 4-7, z 3-5)
    assert float(partial["lesion_dice"]) == pytest.approx(2 * 36 / (108 + 82), abs=1e-6)
    assert float(partial["lesion_fpv_ml"]) == pytest.approx(2 * voxel_ml, rel=1e-6)
    assert float(partial["lesion_fnv_ml"]) == pytest.approx(8 * voxel_ml, rel=1e-6)
    assert float(rows["neg_false_positives"]["lesion_fpv_ml"]) == pytest.approx(9 * voxel_ml, rel=1e-6)
    assert float(rows["neg_clean"]["lesion_fpv_ml"]) == 0.0
    # the challenge's ranking figures: mean Dice and FNV over positives, mean FPV over all cases
    positives = [row for case_id, row in rows.items() if case_id.startswith("pos")]
    assert summary["dice"]["n"] == 3 and summary["fnv_ml"]["n"] == 3 and summary["fpv_ml"]["n"] == 6
    assert summary["dice"]["mean"] == pytest.approx(np.mean([float(r["lesion_dice"]) for r in positives]))
    assert summary["fpv_ml"]["mean"] == pytest.approx(
        np.mean([float(r["lesion_fpv_ml"]) for r in rows.values()])
    )
