"""Pictures: valid PNGs, empty masks, sparse Lightning logs, radiological orientation."""

from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from h2aseg.viz import figures, save_case_figure, save_training_curves
from h2aseg.viz.figures import _to_display


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header; fails on anything that is not a PNG."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert header[12:16] == b"IHDR"
    return struct.unpack(">II", header[16:24])


def _synthetic_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pet_suv = rng.uniform(0.5, 1.5, (24, 20, 40)).astype(np.float32)
    ct_hu = rng.normal(40, 20, pet_suv.shape).astype(np.float32)
    mask = np.zeros(pet_suv.shape, dtype=np.uint8)
    mask[4:8, 5:9, 30:34] = 1
    pet_suv[mask == 1] = 8.0
    return pet_suv, mask, ct_hu


def test_case_figure_is_a_plausible_png(tmp_path: Path) -> None:
    pet_suv, mask, ct_hu = _synthetic_case()
    truth = np.roll(mask, 1, axis=0)
    out_png = tmp_path / "case_mip.png"

    save_case_figure(pet_suv, mask, ct_hu, (4.0, 4.0, 3.0), out_png, title="case", truth=truth)

    width, height = _png_size(out_png)
    assert 600 <= width <= 1700 and 500 <= height <= 800
    assert out_png.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["case_mip.png"]


def test_case_figure_handles_an_empty_mask(tmp_path: Path) -> None:
    pet_suv, mask, ct_hu = _synthetic_case()
    save_case_figure(pet_suv, np.zeros_like(mask), ct_hu, (2.0, 2.0, 2.0), tmp_path / "empty.png")
    assert _png_size(tmp_path / "empty.png")[0] > 0


def test_case_figure_rejects_mismatched_shapes(tmp_path: Path) -> None:
    pet_suv, mask, ct_hu = _synthetic_case()
    with pytest.raises(ValueError, match="CT shape"):
        save_case_figure(pet_suv, mask, ct_hu[:-1], (2.0, 2.0, 2.0), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_display_puts_head_up_and_patient_right_on_the_left() -> None:
    coronal = np.zeros((5, 7))  # (X, Z) in RAS order
    coronal[4, 6] = 1  # patient's far right (largest x), top of the head (largest z)
    image = _to_display(coronal)
    assert image.shape == (7, 5)
    assert image[0, 0] == 1


def test_training_curves_from_a_sparse_lightning_log(tmp_path: Path) -> None:
    metrics_csv = tmp_path / "metrics.csv"
    metrics_csv.write_text(
        "epoch,step,train_loss,val_dice,val_loss\n"
        "0,9,1.2,,\n"
        "0,9,,0.31,0.9\n"
        "1,19,0.8,,\n"
        "1,19,,0.52,0.7\n"
        "2,29,0.6,,\n"
    )
    out_png = tmp_path / "curves.png"
    save_training_curves(metrics_csv, out_png)
    assert _png_size(out_png) == (1100, 400)


def test_training_curves_need_a_loss_or_dice_column(tmp_path: Path) -> None:
    metrics_csv = tmp_path / "metrics.csv"
    metrics_csv.write_text("epoch,step,lr\n0,1,0.1\n")
    with pytest.raises(ValueError, match="no loss or Dice column"):
        save_training_curves(metrics_csv, tmp_path / "curves.png")
    with pytest.raises(ValueError, match="no such metrics file"):
        save_training_curves(tmp_path / "missing.csv", tmp_path / "curves.png")


def test_nifti_figure_reorients_to_ras_and_brings_the_ct_onto_the_pet_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured: dict[str, np.ndarray] = {}

    def capture(
        pet_suv: np.ndarray, mask: np.ndarray, ct_hu: np.ndarray, spacing_mm: np.ndarray, *args, **kwargs
    ) -> None:
        captured.update(pet=pet_suv, mask=mask, ct=ct_hu, spacing=np.asarray(spacing_mm), kwargs=kwargs)

    monkeypatch.setattr(figures, "save_case_figure", capture)
    pet_affine = np.diag([-2.0, -3.0, 4.0, 1.0])  # LPS voxel order: i runs to the patient's left
    mask = np.zeros((6, 5, 4), dtype=np.uint8)
    mask[1, 2, 3] = 1  # the second voxel from the patient's right
    ct_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    ct_affine[:3, 3] = (-14.0, -16.0, -2.0)
    ct = nib.Nifti1Image(np.full((20, 20, 20), 35.0, np.float32), ct_affine)

    figures.save_nifti_case_figure(
        nib.Nifti1Image(mask.astype(np.float32), pet_affine), mask, ct, tmp_path / "x.png"
    )

    assert captured["mask"].shape == (6, 5, 4)
    assert captured["mask"][6 - 1 - 1, 5 - 1 - 2, 3] == 1
    np.testing.assert_array_equal(captured["spacing"], (2.0, 3.0, 4.0))
    np.testing.assert_allclose(captured["ct"], 35.0)
    assert captured["ct"].shape == (20, 20, 20)  # the CT keeps its own grid and resolution
    np.testing.assert_array_equal(captured["kwargs"]["ct_spacing_mm"], (1.0, 1.0, 1.0))


def test_lesion_numbers_sit_beside_their_own_outlines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pet_suv, mask, ct_hu = _synthetic_case()  # lesion A: x 4..7, z 30..33
    mask[15:20, 10:14, 5:9] = 1  # lesion B, larger: x 15..19, z 5..8
    labels: list[tuple[int, float, float]] = []
    monkeypatch.setattr(figures, "_lesion_label", lambda axes, number, a, b: labels.append((number, a, b)))
    spacing, origin = np.array([4.0, 4.0, 3.0]), np.array([-50.0, -40.0, -100.0])
    centre_b = origin + np.array([17.0, 11.5, 6.5]) * spacing
    centre_a = origin + np.array([5.5, 6.5, 31.5]) * spacing
    save_case_figure(
        pet_suv,
        mask,
        ct_hu,
        spacing,
        tmp_path / "x.png",
        origin_mm=origin,
        lesions=[(1, centre_b), (2, centre_a)],
    )
    coronal = {number: (a, b) for number, a, b in labels[::2][:2]}
    # Each id is one voxel beyond its lesion's low-x edge (the display's right), at its centroid's height.
    assert coronal[1] == pytest.approx((origin[0] + 14 * 4.0, centre_b[2]))
    assert coronal[2] == pytest.approx((origin[0] + 3 * 4.0, centre_a[2]))
    assert [number for number, _, _ in labels].count(2) == 3  # coronal, sagittal and the axial slice
