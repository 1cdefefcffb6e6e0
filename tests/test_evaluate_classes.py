"""Per-class evaluation (HECKTOR GTVp = 1, GTVn = 2): closed forms and the organisers' SimpleITK recipe.

The cohort is made by hand: a partial overlap, a primary predicted as a node (swapped classes), a case
without nodes with a false-positive node, and an empty case; each case has its own voxel spacing so that
the aggregated Dice must sum volumes in mm³, as the HECKTOR 2022 notebook does.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from h2aseg.evaluation.evaluate import evaluate_folder, format_summary_table
from h2aseg.evaluation.masks import resample_nearest
from h2aseg.evaluation.metrics import compute_class_metrics, grid_diagonal_mm

SHAPE = (6, 6, 6)
SPACINGS = {"A": (1.0, 1.0, 2.0), "B": (2.0, 2.0, 2.0), "C": (1.0, 1.0, 1.0), "D": (1.0, 1.0, 1.0)}
CLASSES = {0: "background", 1: "GTVp", 2: "GTVn"}
HECKTOR_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "hecktor.yaml"


def hecktor_cohort() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """case -> (prediction, truth) label maps."""
    cases = {}
    pred, truth = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    truth[0:2, 0:2, 0:2] = 1  # GTVp: 8 voxels
    truth[4, 4, 0:2] = 2  # GTVn: 2 voxels
    pred[0, 0:2, 0:2] = 1  # 4 of the GTVp
    pred[2, 0, 0:2] = 1  # + 2 outside it
    pred[4, 4, 0:2] = 2  # the node exactly
    cases["A"] = (pred, truth)
    pred, truth = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    truth[1:3, 1:3, 3] = 1  # GTVp: 4 voxels ...
    pred[1:3, 1:3, 3] = 2  # ... predicted as a node
    cases["B"] = (pred, truth)
    pred, truth = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    truth[0, 0, 0:3] = 1  # GTVp: 3 voxels, no node
    pred[0, 0, 0:3] = 1
    pred[5, 5, 5] = 2  # a false-positive node
    cases["C"] = (pred, truth)
    cases["D"] = (np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8))
    return cases


def write_cohort(root: Path) -> tuple[Path, Path]:
    pred_dir, gt_dir = root / "pred", root / "gt"
    pred_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    for case_id, (pred, truth) in hecktor_cohort().items():
        affine = np.diag([*SPACINGS[case_id], 1.0])
        nib.save(nib.Nifti1Image(pred, affine), pred_dir / f"{case_id}_seg.nii.gz")
        nib.save(nib.Nifti1Image(truth, affine), gt_dir / f"{case_id}.nii.gz")
    return pred_dir, gt_dir


def organisers_aggregated_dice(root: Path) -> dict[str, float]:
    """The HECKTOR 2022 notebook's recipe with SimpleITK: per case and class the Dice of
    ``LabelOverlapMeasuresImageFilter`` and the volumes (voxel count × spacing product, mm³) of
    ``LabelStatisticsImageFilter``; TP = Dice × (V_truth + V_pred) / 2; aggregated
    2 ΣTP / Σ(V_truth + V_pred)."""
    tp = {1: 0.0, 2: 0.0}
    volume_sum = {1: 0.0, 2: 0.0}
    for case_id in SPACINGS:
        truth = sitk.Cast(sitk.ReadImage(str(root / "gt" / f"{case_id}.nii.gz")), sitk.sitkUInt8)
        pred = sitk.Cast(sitk.ReadImage(str(root / "pred" / f"{case_id}_seg.nii.gz")), sitk.sitkUInt8)
        overlap = sitk.LabelOverlapMeasuresImageFilter()
        overlap.Execute(truth, pred)
        for label in (1, 2):
            volumes = []
            for image in (truth, pred):
                statistics = sitk.LabelStatisticsImageFilter()
                statistics.Execute(image, image)
                count = statistics.GetCount(label) if statistics.HasLabel(label) else 0
                volumes.append(count * float(np.prod(image.GetSpacing())))
            dice = overlap.GetDiceCoefficient(label) if sum(volumes) else 0.0
            tp[label] += dice * sum(volumes) / 2
            volume_sum[label] += sum(volumes)
    gtvp, gtvn = 2 * tp[1] / volume_sum[1], 2 * tp[2] / volume_sum[2]
    return {"GTVp": gtvp, "GTVn": gtvn, "mean": (gtvp + gtvn) / 2}


def test_class_metrics_closed_forms() -> None:
    cohort = hecktor_cohort()
    a = compute_class_metrics(*cohort["A"], SPACINGS["A"], [1, 2])
    assert a[1].dice == pytest.approx(2 * 4 / (6 + 8), abs=1e-6)
    assert (a[1].precision, a[1].recall) == (pytest.approx(4 / 6), pytest.approx(4 / 8))
    assert a[2].dice == pytest.approx(1.0) and a[2].hd95_mm == 0.0
    # the primary predicted as a node: a miss of class 1, a false positive of class 2
    b = compute_class_metrics(*cohort["B"], SPACINGS["B"], [1, 2])
    assert (b[1].dice, b[1].recall, b[1].fpv_ml) == (0.0, 0.0, 0.0)
    assert b[1].fnv_ml == pytest.approx(4 * 8 / 1000, abs=1e-9)
    assert (
        b[1].hd95_mm
        == pytest.approx(grid_diagonal_mm(SHAPE, SPACINGS["B"]))
        == pytest.approx(math.sqrt(3 * 10.0**2))
    )
    assert math.isnan(b[1].precision)
    assert math.isnan(b[2].dice) and math.isnan(b[2].fnv_ml) and b[2].precision == 0.0
    assert b[2].fpv_ml == pytest.approx(4 * 8 / 1000, abs=1e-9)
    # no node in the truth, a false-positive node: the node's Dice is undefined, its FPV counted
    c = compute_class_metrics(*cohort["C"], SPACINGS["C"], [1, 2])
    assert c[1].dice == pytest.approx(1.0)
    assert math.isnan(c[2].dice) and c[2].fpv_ml == pytest.approx(0.001) and c[2].precision == 0.0
    d = compute_class_metrics(*cohort["D"], SPACINGS["D"], [1, 2])
    assert all(math.isnan(d[k].dice) and d[k].fpv_ml == 0.0 for k in (1, 2))


def test_summary_per_class_and_macro_mean_match_the_organisers(tmp_path: Path) -> None:
    pred_dir, gt_dir = write_cohort(tmp_path)
    summary = evaluate_folder(pred_dir, gt_dir, tmp_path / "out", classes=CLASSES)
    gtvp, gtvn = summary["classes"]["GTVp"], summary["classes"]["GTVn"]
    assert (gtvp["label"], gtvn["label"], summary["n_cases"]) == (1, 2, 4)
    # by hand, in mm³: GTVp  2 (4*2 + 0 + 3*1) / ((6+8)*2 + (0+4)*8 + (3+3)*1 + 0) = 22 / 66
    #                  GTVn  2 (2*2 + 0 + 0) / ((2+2)*2 + (4+0)*8 + (1+0)*1 + 0) = 8 / 41
    assert gtvp["dice_agg"]["mean"] == pytest.approx(1 / 3, abs=1e-6)
    assert gtvn["dice_agg"]["mean"] == pytest.approx(8 / 41, abs=1e-6)
    assert summary["dice_agg"]["mean"] == pytest.approx((1 / 3 + 8 / 41) / 2, abs=1e-6)
    organisers = organisers_aggregated_dice(tmp_path)
    assert gtvp["dice_agg"]["mean"] == pytest.approx(organisers["GTVp"], abs=1e-6)
    assert gtvn["dice_agg"]["mean"] == pytest.approx(organisers["GTVn"], abs=1e-6)
    assert summary["dice_agg"]["mean"] == pytest.approx(organisers["mean"], abs=1e-6)
    # per-case Dice over the cases with the class: GTVp A, B, C; GTVn only A
    assert gtvp["dice"]["n"] == 3 and gtvp["dice"]["mean"] == pytest.approx((8 / 14 + 0 + 1) / 3, abs=1e-6)
    assert gtvn["dice"] == {"mean": pytest.approx(1.0), "std": pytest.approx(0.0), "n": 1}
    assert gtvn["fpv_ml"]["mean"] == pytest.approx((0 + 0.032 + 0.001 + 0) / 4, abs=1e-9)
    assert summary["dice"] == {"mean": pytest.approx(((8 / 14 + 1) / 3 + 1) / 2), "std": None, "n": 2}

    out = tmp_path / "out"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    with (out / "per_case.csv").open() as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert float(rows["B"]["GTVp_dice"]) == 0.0 and math.isnan(float(rows["B"]["GTVn_dice"]))
    assert float(rows["C"]["GTVn_fpv_ml"]) == pytest.approx(0.001)
    assert math.isnan(float(rows["D"]["GTVp_dice"]))
    lines = format_summary_table(summary, method="H2ASeg").splitlines()
    assert [line.split(" | ")[1] for line in lines[2:]] == ["GTVp (1)", "GTVn (2)", "mean of classes"]
    assert lines[-1].split(" | ")[-2] == f"{100 * (1 / 3 + 8 / 41) / 2:.2f}"


def test_truth_labels_make_it_multiclass_and_labels_select(tmp_path: Path) -> None:
    pred_dir, gt_dir = write_cohort(tmp_path)
    summary = evaluate_folder(pred_dir, gt_dir)  # no config: the truth has labels 1 and 2
    assert list(summary["classes"]) == ["label1", "label2"]
    only_nodes = evaluate_folder(pred_dir, gt_dir, classes=CLASSES, labels=["gtvn"])
    assert list(only_nodes["classes"]) == ["GTVn"]
    assert only_nodes["dice_agg"] == only_nodes["classes"]["GTVn"]["dice_agg"]
    assert list(evaluate_folder(pred_dir, gt_dir, labels=[2, "1"])["classes"]) == ["label2", "label1"]
    with pytest.raises(ValueError, match=r"labels: 'GTVx' is not a class; the classes are 1 \(GTVp\), 2"):
        evaluate_folder(pred_dir, gt_dir, classes=CLASSES, labels=["GTVx"])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.5, "labels must be integer classes, found the value 0.5"),
        (-1.0, "found the value -1"),
        (3.0, "label 3 is not one of the classes 0, 1, 2"),
    ],
)
def test_masks_that_are_not_integer_classes_are_refused(tmp_path: Path, value: float, message: str) -> None:
    pred_dir, gt_dir = write_cohort(tmp_path)
    bad = hecktor_cohort()["B"][0].astype(np.float32)
    bad[0, 0, 0] = value
    nib.save(nib.Nifti1Image(bad, np.diag([*SPACINGS["B"], 1.0])), pred_dir / "B_seg.nii.gz")
    with pytest.raises(ValueError, match=rf"pred/B_seg.nii.gz: .*{message}"):
        evaluate_folder(pred_dir, gt_dir, classes=CLASSES)


def test_binary_config_refuses_hecktor_truth(tmp_path: Path) -> None:
    pred_dir, gt_dir = write_cohort(tmp_path)
    with pytest.raises(ValueError, match=r"gt/A.nii.gz: label 2 is not one of the classes 0, 1"):
        evaluate_folder(pred_dir, gt_dir, classes={0: "background", 1: "lesion"})


def test_other_grid_is_named_or_resampled_like_simpleitk(tmp_path: Path) -> None:
    truth = np.zeros((10, 9, 8), np.uint8)
    truth[2:6, 3:7, 2:5] = 1
    truth[7:9, 1:3, 5:7] = 2
    truth_affine = np.diag([1.0, 1.0, 1.5, 1.0])
    truth_affine[:3, 3] = (-4.0, 3.0, 10.0)
    # the prediction on a coarser, shifted grid (as on a PET grid)
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 3, size=(6, 5, 4)).astype(np.uint8)
    pred_affine = np.diag([2.0, 2.0, 3.0, 1.0])
    pred_affine[:3, 3] = (-4.3, 2.2, 9.1)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(truth, truth_affine), tmp_path / "gt" / "x.nii.gz")
    nib.save(nib.Nifti1Image(pred, pred_affine), tmp_path / "pred" / "x_seg.nii.gz")
    with pytest.raises(ValueError, match=r"pred/x_seg.nii.gz and .*gt/x.nii.gz are on different grids"):
        evaluate_folder(tmp_path / "pred", tmp_path / "gt")
    summary = evaluate_folder(tmp_path / "pred", tmp_path / "gt", resample_to_truth=True)

    # the organisers' resampling: SimpleITK, nearest neighbour, onto the truth image's domain
    truth_image = sitk.ReadImage(str(tmp_path / "gt" / "x.nii.gz"))
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(truth_image)
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampled = resampler.Execute(sitk.ReadImage(str(tmp_path / "pred" / "x_seg.nii.gz")))
    expected = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    ours = resample_nearest(pred, pred_affine, truth.shape, truth_affine)
    assert np.count_nonzero(expected) > 100 and np.array_equal(ours, expected)
    metrics = compute_class_metrics(expected, truth, (1.0, 1.0, 1.5), [1, 2])
    for label, name in ((1, "label1"), (2, "label2")):
        assert summary["classes"][name]["dice"]["mean"] == pytest.approx(metrics[label].dice, abs=1e-6)
        assert summary["classes"][name]["precision"]["mean"] == pytest.approx(metrics[label].precision)


def test_cli_per_class_table_labels_by_name_and_one_line_refusals(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from h2aseg.cli import app

    pred_dir, gt_dir = write_cohort(tmp_path)
    runner = CliRunner()
    base = ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--config", str(HECKTOR_CONFIG)]
    result = runner.invoke(app, [*base, "--labels", "GTVn,GTVp", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| prediction")]
    assert [row.split(" | ")[1] for row in rows] == ["GTVn (2)", "GTVp (1)", "mean of classes"]
    assert all(row.endswith("|") for row in rows)  # one line per row, whatever the terminal width
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dice_agg"]["mean"] == pytest.approx((1 / 3 + 8 / 41) / 2, abs=1e-6)

    result = runner.invoke(app, [*base, "--labels", "3"])
    assert result.exit_code == 1 and "'3' is not a class" in result.output.strip().splitlines()[-1]
    bad = hecktor_cohort()["A"][0].astype(np.float32) * 0.5
    nib.save(nib.Nifti1Image(bad, np.diag([*SPACINGS["A"], 1.0])), pred_dir / "A_seg.nii.gz")
    result = runner.invoke(app, base)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1
    assert "A_seg.nii.gz: labels must be integer classes, found the value 0.5" in lines[0]
