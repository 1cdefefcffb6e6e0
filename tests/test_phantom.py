"""Synthetic PET/CT phantom: determinism, physical values, lesions, presets, files, PET-only baseline."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from h2aseg.phantom.anatomy import LESION_INDEX_BASE, TISSUE_INDEX, TISSUES
from h2aseg.phantom.cohort import (
    PhantomCase,
    cohort_plan,
    make_phantom_case,
    save_phantom_preview,
    threshold_baseline_dice,
    write_cohort,
)
from h2aseg.phantom.render import _pet_acquisition
from h2aseg.phantom.sampling import PRESETS, sample_case_parameters
from h2aseg.phantom.shapes import Grid

ORGANS_WITH_UPTAKE = (
    "myocardium",
    "kidney",
    "renal_pelvis",
    "bowel",
    "liver",
    "spleen",
    "brain_grey",
    "tonsil",
)


@pytest.fixture(scope="module")
def small_cases() -> list[PhantomCase]:
    """Six small phantoms (about 0.1 s each)."""
    return [make_phantom_case(seed, "small") for seed in range(6)]


def _median(case: PhantomCase, tissue: str, volume: np.ndarray) -> float:
    return float(np.median(volume[case.tissues == TISSUE_INDEX[tissue]]))


def test_same_seed_gives_identical_arrays_and_other_seeds_differ(small_cases: list[PhantomCase]) -> None:
    again = make_phantom_case(1, "small")
    first = small_cases[1]
    for name in ("ct_hu", "pet_suv", "mask", "ct_affine", "pet_affine"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert again.patient_id == first.patient_id
    assert not np.array_equal(small_cases[2].pet_suv, first.pet_suv)
    assert small_cases[2].patient_id != first.patient_id


def test_small_preset_geometry_and_dtypes(small_cases: list[PhantomCase]) -> None:
    case = small_cases[0]
    assert case.ct_hu.shape == case.pet_suv.shape == case.mask.shape == (72, 64, 64)
    assert case.ct_hu.dtype == case.pet_suv.dtype == np.float32
    assert case.mask.dtype == np.uint8
    assert case.ct_spacing_mm == case.pet_spacing_mm == (4.0, 4.0, 4.0)
    np.testing.assert_array_equal(np.diag(case.ct_affine), [4.0, 4.0, 4.0, 1.0])


def test_ct_values_are_physical(small_cases: list[PhantomCase]) -> None:
    for case in small_cases:
        assert -870 < _median(case, "lung", case.ct_hu) < -760
        assert _median(case, "bone_cortical", case.ct_hu) > 300
        assert -130 < _median(case, "fat", case.ct_hu) < -70
        assert 30 < _median(case, "muscle", case.ct_hu) < 70
        assert _median(case, "air", case.ct_hu) == -1000


def test_bladder_has_the_highest_uptake(small_cases: list[PhantomCase]) -> None:
    for case in small_cases:
        suv = case.params.suv
        bladder = suv[TISSUE_INDEX["bladder"]]
        assert all(suv[TISSUE_INDEX[name]] < bladder for name in TISSUES if name != "bladder")
        interior = ndimage.binary_erosion(case.tissues == TISSUE_INDEX["bladder"], iterations=1)
        bladder_pet = float(np.median(case.pet_suv[interior]))
        for name in ORGANS_WITH_UPTAKE:
            if (case.tissues == TISSUE_INDEX[name]).any():
                assert _median(case, name, case.pet_suv) < bladder_pet


def test_lesions_are_hotter_than_their_surroundings(small_cases: list[PhantomCase]) -> None:
    lesions = 0
    for case in small_cases:
        body = case.tissues > 0
        for k in range(len(case.params.lesions)):
            lesion = np.isin(case.tissues, [LESION_INDEX_BASE + 2 * k, LESION_INDEX_BASE + 2 * k + 1])
            peak = case.pet_suv[ndimage.binary_dilation(lesion)].max()
            shell = ndimage.binary_dilation(lesion, iterations=4) & ~ndimage.binary_dilation(
                lesion, iterations=2
            )
            background = float(np.median(case.pet_suv[shell & body]))
            assert peak > background + 1.0 and peak > 1.5 * background
            lesions += 1
    assert lesions >= 3


def test_masks_are_true_lesion_extent_inside_the_body(small_cases: list[PhantomCase]) -> None:
    for case in small_cases:
        assert np.all(case.tissues[case.mask > 0] != TISSUE_INDEX["air"])
        np.testing.assert_array_equal(case.mask > 0, case.tissues >= LESION_INDEX_BASE)
        assert case.mask.any() == bool(case.params.lesions)


def test_about_a_third_of_small_cases_have_no_lesion() -> None:
    plan = cohort_plan(30, seed=0, layout="flat")
    params = [sample_case_parameters(entry.case_seed, "small") for entry in plan]
    negatives = sum(not p.lesions for p in params)
    assert 6 <= negatives <= 15
    diameters = [lesion.diameter_mm for p in params for lesion in p.lesions]
    assert all(10.0 <= d <= 40.0 for d in diameters)
    sites = {lesion.site.split("_")[0] for p in params for lesion in p.lesions}
    assert {"lung", "liver", "node", "bone"} <= sites


def test_pet_blur_has_the_scanner_fwhm_and_noise_grows_with_uptake() -> None:
    params = dataclasses.replace(sample_case_parameters(0, "small"), liver_noise_cv=0.0)
    point = np.zeros((41, 41, 41), dtype=np.float32)
    point[20, 20, 20] = 1.0
    spacing, fwhm = 1.0, params.preset.pet_fwhm_mm
    sigma = [fwhm / 2.3548 / spacing] * 3
    profile = _pet_acquisition(point, sigma, params, np.random.default_rng(0))[:, 20, 20]
    above_half = np.flatnonzero(profile >= profile.max() / 2)
    assert abs((above_half[-1] - above_half[0] + 1) * spacing - fwhm) <= 1.0

    noisy = dataclasses.replace(params, liver_noise_cv=0.1)
    liver = float(params.suv[TISSUE_INDEX["liver"]])
    stds = []
    for level in (liver, 4 * liver):
        uniform = np.full((48, 48, 48), level, dtype=np.float32)
        image = _pet_acquisition(uniform, [1.0, 1.0, 1.0], noisy, np.random.default_rng(1))[8:-8, 8:-8, 8:-8]
        stds.append(float(image.std()))
        assert abs(float(image.mean()) - level) < 0.02 * level
    assert stds[0] / liver == pytest.approx(0.1, rel=0.1)
    assert stds[1] / stds[0] == pytest.approx(2.0, rel=0.1)  # variance proportional to the signal


def test_hecktor_preset_has_distinct_grids_and_gtv_labels() -> None:
    case = make_phantom_case(3, "hecktor")
    assert case.ct_spacing_mm == (1.0, 1.0, 1.0) and case.pet_spacing_mm == (4.0, 4.0, 4.0)
    assert case.ct_hu.shape != case.pet_suv.shape
    assert not np.allclose(case.ct_affine[:3, 3], case.pet_affine[:3, 3])
    assert case.mask.shape == case.ct_hu.shape
    assert set(np.unique(case.mask)) <= {0, 1, 2} and (case.mask == 1).any()
    ct_on_pet, pet, mask_on_pet = case.on_pet_grid()
    assert ct_on_pet.shape == mask_on_pet.shape == pet.shape
    drawn = [sample_case_parameters(seed, "hecktor") for seed in range(12)]
    assert {lesion.label for params in drawn for lesion in params.lesions} == {1, 2}
    assert all(params.lesions[0].site.startswith("gtvp") for params in drawn)  # every case has a GTVp


def test_whole_body_preset_has_brain_uptake_and_autopet_spacing() -> None:
    preset = PRESETS["autopet"]
    assert preset.ct_grid.spacing_mm == (2.0364, 2.0364, 3.0) and preset.pet_grid is None
    coarse = dataclasses.replace(
        preset, ct_grid=Grid((102, 102, 131), (8.0, 8.0, 8.0), (-404.0, -404.0, -1250.0))
    )
    case = make_phantom_case(2, coarse)
    assert (case.tissues == TISSUE_INDEX["brain_grey"]).any()
    assert _median(case, "brain_grey", case.pet_suv) > 3.0
    assert _median(case, "bone_cortical", case.ct_hu) > 300


def test_written_files_round_trip_through_nibabel(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path, n_cases=2, seed=5, layout="flat", preset="small")
    plan = cohort_plan(2, seed=5, layout="flat")
    for case, entry in zip(cases, plan, strict=True):
        expected = make_phantom_case(entry.case_seed, "small", entry.anatomy_seed)
        for path, array, dtype in (
            (case.ct, expected.ct_hu, np.float32),
            (case.pet, expected.pet_suv, np.float32),
            (case.label, expected.mask, np.uint8),
        ):
            image = nib.load(path)
            assert image.get_data_dtype() == dtype
            np.testing.assert_allclose(image.affine, expected.pet_affine)
            assert image.header.get_zooms() == pytest.approx(expected.pet_spacing_mm)
            assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
            np.testing.assert_array_equal(np.asarray(image.dataobj), array)
    assert not list(tmp_path.glob(".*tmp*"))


def _write_flat_case(root: Path, name: str, pet: np.ndarray, mask: np.ndarray) -> None:
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for suffix, array in (("ct", np.zeros_like(pet)), ("pet", pet), ("seg", mask)):
        nib.save(nib.Nifti1Image(array, affine), root / f"{name}_{suffix}.nii.gz")


def test_threshold_baseline_dice_closed_form(tmp_path: Path) -> None:
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    pet = np.where(mask > 0, 6.0, 1.0).astype(np.float32)
    _write_flat_case(tmp_path, "perfect", pet, mask)
    assert threshold_baseline_dice(tmp_path) == 1.0
    hot_organ = pet.copy()
    hot_organ[6:8, 6:8, 6:8] = 20.0  # as many false-positive voxels as lesion voxels
    _write_flat_case(tmp_path, "organ", hot_organ, mask)
    assert threshold_baseline_dice(tmp_path) == pytest.approx(2 * 16 / (24 + 16))
    assert threshold_baseline_dice(tmp_path, reduction="mean") == pytest.approx((1.0 + 2 / 3) / 2)
    assert threshold_baseline_dice(tmp_path, threshold=10.0) == 0.0


def test_pet_threshold_alone_is_far_from_perfect(small_cases: list[PhantomCase]) -> None:
    assert threshold_baseline_dice(small_cases) < 0.5


def test_preview_is_a_png(tmp_path: Path, small_cases: list[PhantomCase]) -> None:
    out = tmp_path / "img" / "preview.png"
    save_phantom_preview(small_cases[1], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="preset"):
        make_phantom_case(0, "tiny")
    with pytest.raises(ValueError, match="n_cases"):
        write_cohort(tmp_path, n_cases=0, seed=0)
    with pytest.raises(ValueError, match="layout"):
        write_cohort(tmp_path, n_cases=1, seed=0, layout="bids")  # type: ignore[arg-type]
