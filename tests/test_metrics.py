"""Metrics against hand-computed values, closed forms and an independent surface-distance reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from h2aseg.evaluation.metrics import (
    aggregated_dice,
    aggregated_dice_of_cases,
    compute_case_metrics,
    dice,
    false_negative_volume_ml,
    false_positive_volume_ml,
    grid_diagonal_mm,
    hd95,
    precision,
    recall,
    voxel_volume_ml,
)

SPACING = (2.0, 3.0, 4.0)  # one voxel = 24 mm³ = 0.024 mL
VOXEL_ML = 0.024


def mask_with(shape: tuple[int, int, int], voxels: list[tuple[int, int, int]]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(np.array(voxels).T)] = True
    return mask


def test_overlap_metrics_by_hand() -> None:
    truth = np.zeros((6, 6, 6), dtype=bool)
    truth[1:3, 1:4, 1] = True  # 6 voxels
    pred = np.zeros_like(truth)
    pred[2, 1:4, 1] = True  # 3 of them
    pred[5, 5, 5] = True  # + 1 outside
    assert dice(pred, truth) == pytest.approx(2 * 3 / (4 + 6))
    assert precision(pred, truth) == pytest.approx(3 / 4)
    assert recall(pred, truth) == pytest.approx(3 / 6)
    # integer label maps are binarised (> 0): HECKTOR's label 2 counts as lesion
    assert dice(pred.astype(np.uint8) * 2, truth.astype(np.uint8)) == pytest.approx(0.6)


def test_both_empty() -> None:
    empty = np.zeros((4, 4, 4), dtype=bool)
    case = compute_case_metrics(empty, empty, SPACING)
    assert (case.hd95_mm, case.fpv_ml) == (0.0, 0.0)
    # autoPET III: Dice and FNV are undefined without a true lesion (never 1.0)
    assert math.isnan(case.dice) and math.isnan(case.fnv_ml)
    assert math.isnan(case.precision) and math.isnan(case.recall)
    assert not case.has_lesion


def test_empty_prediction() -> None:
    truth = mask_with((4, 4, 4), [(1, 1, 1), (1, 1, 2)])
    case = compute_case_metrics(np.zeros_like(truth), truth, SPACING)
    assert case.dice == 0.0 and case.recall == 0.0
    assert math.isnan(case.precision)
    # one side empty: HD95 is the grid diagonal |(4-1, 4-1, 4-1) * (2, 3, 4)| mm
    assert case.hd95_mm == pytest.approx(math.sqrt(6**2 + 9**2 + 12**2), rel=1e-9)
    assert case.fnv_ml == pytest.approx(2 * VOXEL_ML)
    assert case.fpv_ml == 0.0


def test_empty_truth() -> None:
    pred = mask_with((4, 4, 4), [(0, 0, 0), (3, 3, 3), (3, 3, 2)])
    case = compute_case_metrics(pred, np.zeros_like(pred), SPACING)
    assert case.precision == 0.0
    assert math.isnan(case.dice) and math.isnan(case.recall) and math.isnan(case.fnv_ml)
    assert case.hd95_mm == pytest.approx(grid_diagonal_mm((4, 4, 4), SPACING))
    assert case.fpv_ml == pytest.approx(3 * VOXEL_ML)


def test_fpv_uses_18_connectivity() -> None:
    truth = mask_with((5, 5, 5), [(1, 1, 1)])
    # (2, 2, 2) meets (1, 1, 1) only at a corner: 26- but not 18-connected, so its own false component.
    corner = mask_with((5, 5, 5), [(1, 1, 1), (2, 2, 2)])
    assert false_positive_volume_ml(corner, truth, SPACING) == pytest.approx(VOXEL_ML)
    # (2, 2, 1) shares an edge: 18-connected, one component that touches the truth, no false positive.
    edge = mask_with((5, 5, 5), [(1, 1, 1), (2, 2, 1)])
    assert false_positive_volume_ml(edge, truth, SPACING) == 0.0


def test_fnv_uses_18_connectivity_and_whole_components() -> None:
    pred = mask_with((5, 5, 5), [(1, 1, 1)])
    corner = mask_with((5, 5, 5), [(1, 1, 1), (2, 2, 2)])
    assert false_negative_volume_ml(pred, corner, SPACING) == pytest.approx(VOXEL_ML)
    # a true component touched by one predicted voxel is not missed at all, however little is covered
    big = np.zeros((5, 5, 5), dtype=bool)
    big[0:3, 0:3, 0:3] = True
    assert false_negative_volume_ml(pred, big, SPACING) == 0.0
    assert recall(pred, big) == pytest.approx(1 / 27)


def test_hd95_anisotropic_closed_form_percentile() -> None:
    # truth: one voxel; prediction: that voxel + one at offset (3, 0, 2) voxels = (6, 0, 6) mm.
    # pred -> truth distances {0, d}: 95th percentile (linear) = 0.95 d; truth -> pred {0}.
    truth = mask_with((8, 8, 8), [(2, 2, 2)])
    pred = mask_with((8, 8, 8), [(2, 2, 2), (5, 2, 4)])
    d = math.hypot(3 * 2.0, 2 * 3.0)
    assert hd95(pred, truth, (2.0, 1.0, 3.0)) == pytest.approx(0.95 * d, rel=1e-6)


@pytest.mark.parametrize(("axis", "spacing", "expected_mm"), [(0, (2.5, 1, 1), 7.5), (2, (1, 1, 4.0), 12.0)])
def test_hd95_parallel_slabs(axis: int, spacing: tuple[float, float, float], expected_mm: float) -> None:
    truth = np.zeros((8, 8, 8), dtype=bool)
    pred = np.zeros_like(truth)
    np.moveaxis(truth, axis, 0)[2] = True
    np.moveaxis(pred, axis, 0)[5] = True
    assert hd95(pred, truth, spacing) == pytest.approx(expected_mm)


def reference_hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Independent reference: surfaces by 6-connected erosion, distances by scipy's exact EDT."""

    def surface(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))

    def directed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(~surface(b), sampling=spacing)[surface(a)]

    return float(max(np.percentile(directed(pred, truth), 95), np.percentile(directed(truth, pred), 95)))


def test_hd95_matches_reference_on_random_blobs() -> None:
    rng = np.random.default_rng(0)
    spacing = (0.8, 1.3, 3.0)
    for _ in range(3):
        truth = ndimage.gaussian_filter(rng.random((24, 20, 16)), 2.0) > 0.52
        pred = ndimage.gaussian_filter(rng.random((24, 20, 16)), 2.0) > 0.52
        assert truth.any() and pred.any()
        assert hd95(pred, truth, spacing) == pytest.approx(reference_hd95(pred, truth, spacing), rel=1e-5)


def test_aggregated_dice_by_hand() -> None:
    truth_a = mask_with((4, 4, 4), [(0, 0, 0), (0, 0, 1), (0, 0, 2)])
    pred_a = mask_with((4, 4, 4), [(0, 0, 0), (0, 0, 1)])
    truth_b = np.zeros((4, 4, 4), dtype=bool)
    pred_b = mask_with((4, 4, 4), [(3, 3, 3)])
    # one spacing: 2 * (2 + 0) / ((2 + 3) + (1 + 0)) = 4 / 6; the positive case's own Dice is 0.8
    expected = 4 / 6
    assert aggregated_dice([(pred_a, truth_a, SPACING), (pred_b, truth_b, SPACING)]) == pytest.approx(
        expected
    )
    cases = [compute_case_metrics(p, t, SPACING) for p, t in [(pred_a, truth_a), (pred_b, truth_b)]]
    assert aggregated_dice_of_cases(cases) == pytest.approx(expected)
    # HECKTOR sums volumes in mm³: case b at 8x the voxel volume weighs 8x: 2 * 2 / (5 + 8 * 1)
    big = (4.0, 6.0, 8.0)
    assert aggregated_dice([(pred_a, truth_a, SPACING), (pred_b, truth_b, big)]) == pytest.approx(4 / 13)
    mixed = [compute_case_metrics(pred_a, truth_a, SPACING), compute_case_metrics(pred_b, truth_b, big)]
    assert aggregated_dice_of_cases(mixed) == pytest.approx(4 / 13, rel=1e-12)
    # every mask empty: the organisers' 0 / 0, undefined
    assert math.isnan(aggregated_dice([(truth_b, truth_b, SPACING)]))


def test_case_metrics_agree_with_functions() -> None:
    rng = np.random.default_rng(1)
    truth = ndimage.gaussian_filter(rng.random((16, 16, 12)), 1.5) > 0.53
    pred = ndimage.gaussian_filter(rng.random((16, 16, 12)), 1.5) > 0.53
    case = compute_case_metrics(pred, truth, SPACING)
    assert case.dice == pytest.approx(dice(pred, truth))
    assert case.hd95_mm == pytest.approx(hd95(pred, truth, SPACING))
    assert case.fpv_ml == pytest.approx(false_positive_volume_ml(pred, truth, SPACING))
    assert case.fnv_ml == pytest.approx(false_negative_volume_ml(pred, truth, SPACING))
    assert case.voxel_volume_ml == pytest.approx(voxel_volume_ml(SPACING)) == pytest.approx(VOXEL_ML)
    assert list(case.as_dict())[:2] == ["dice", "hd95_mm"]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"prediction \(4, 4, 4\) and ground truth \(4, 4, 5\)"):
        dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="3-D"):
        recall(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="spacing_mm"):
        hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 0.0, 1.0))
