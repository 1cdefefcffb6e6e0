"""Tests of h2aseg.data.transforms: scaling, crop, patches, cache and the geometry round trip."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor, list_data_collate

from h2aseg.data.transforms import (
    PreprocessConfig,
    make_dataset,
    predict_transforms,
    preprocess_transforms,
    restore_to_original,
    train_transforms,
    val_transforms,
)

BODY = (slice(4, 16), slice(3, 15), slice(2, 10))  # body box of the small case, 12 x 12 x 8 voxels


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def _lps_affine(spacing_mm: tuple[float, float, float], origin_mm: tuple[float, float, float]) -> np.ndarray:
    """Affine whose first two voxel axes run towards L and P (as DICOM-derived NIfTIs often do)."""
    affine = np.diag([-spacing_mm[0], -spacing_mm[1], spacing_mm[2], 1.0])
    affine[:3, 3] = origin_mm
    return affine


def _body_case(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CT (air, 40 HU body), PET (0, 1 SUV body, 8 SUV lesions) and label (1 = GTVp, 2 = GTVn)."""
    ct_hu = np.full(shape, -1000.0, np.float32)
    pet_suv = np.zeros(shape, np.float32)
    ct_hu[BODY] = 40.0
    pet_suv[BODY] = 1.0
    label = np.zeros(shape, np.uint8)
    label[6:9, 5:8, 4:7] = 1
    label[10:12, 9:11, 5:7] = 2
    pet_suv[label > 0] = 8.0
    return ct_hu, pet_suv, label


@pytest.fixture
def pet_grid_case(tmp_path: Path) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """One case on a single 3 x 3 x 4 mm LPS grid (AutoPET-like): item, label, PET affine."""
    affine = _lps_affine((3.0, 3.0, 4.0), (30.0, 40.0, -50.0))
    ct_hu, pet_suv, label = _body_case((20, 18, 12))
    item = {
        "case_id": "case0",
        "ct": _save(ct_hu, affine, tmp_path / "case0_ct.nii.gz"),
        "pet": _save(pet_suv, affine, tmp_path / "case0_pet.nii.gz"),
        "label": _save(label, affine, tmp_path / "case0_seg.nii.gz"),
    }
    return item, label, affine


@pytest.fixture
def hecktor_case(tmp_path: Path) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """PET on a 4 mm grid, CT and label on a 1 mm grid one PET voxel larger on every side.

    The label is constant on each PET voxel's 4 x 4 x 4 block of CT voxels, so nearest-neighbour
    resampling CT → PET → CT is exact. Returns the item, the CT-grid label and the CT affine.
    """
    pet_shape = (8, 8, 6)
    pet_affine = _lps_affine((4.0, 4.0, 4.0), (20.0, 10.0, -30.0))
    ct_affine = pet_affine @ np.array(
        [[0.25, 0, 0, -1.375], [0, 0.25, 0, -1.375], [0, 0, 0.25, -1.375], [0, 0, 0, 1]]
    )
    pet_suv = np.zeros(pet_shape, np.float32)
    pet_suv[1:7, 1:7, 1:5] = 1.5
    label_pet_grid = np.zeros(pet_shape, np.uint8)
    label_pet_grid[2:4, 3:5, 2:4] = 1
    label_pet_grid[5, 5, 3] = 2
    pet_suv[label_pet_grid > 0] = 9.0
    block = np.ones((4, 4, 4), np.uint8)
    label_ct = np.pad(np.kron(label_pet_grid, block), 4)
    ct_hu = np.pad(np.kron(np.where(pet_suv > 0, 30.0, -1000.0), block), 4, constant_values=-1000.0)
    item = {
        "case_id": "CHUM-001",
        "ct": _save(ct_hu.astype(np.float32), ct_affine, Path(tmp_path) / "ct.nii.gz"),
        "pet": _save(pet_suv, pet_affine, Path(tmp_path) / "pet.nii.gz"),
        "label": _save(label_ct, ct_affine, Path(tmp_path) / "seg.nii.gz"),
    }
    return item, label_ct, ct_affine


def test_config_round_trip_and_validation() -> None:
    cfg = PreprocessConfig(target_spacing_mm=(2.0, 2.0, 3.0), patch_size=(64, 64, 32))
    plain = cfg.to_dict()
    json.dumps(plain)  # plain types only
    assert plain["patch_size"] == [64, 64, 32]
    assert PreprocessConfig.from_dict(plain) == cfg
    assert PreprocessConfig.from_dict(None) == PreprocessConfig()
    with pytest.raises(ValueError, match="unknown preprocess option"):
        PreprocessConfig.from_dict({"ct_windw_hu": [-100, 100]})
    with pytest.raises(ValueError, match="ct_window_hu"):
        PreprocessConfig.from_dict({"ct_window_hu": [100, -100]})
    with pytest.raises(ValueError, match="positive_fraction"):
        PreprocessConfig(positive_fraction=1.5)


def test_preprocess_scales_crops_and_keeps_geometry(pet_grid_case: tuple) -> None:
    item, label, affine = pet_grid_case
    cfg = PreprocessConfig(crop_margin_voxels=1)
    data = preprocess_transforms(cfg, with_label=True)(dict(item))
    image = data["image"]
    assert isinstance(image, MetaTensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (2, 14, 14, 10)  # body box 12 x 12 x 8 plus one voxel each side
    assert data["label"].dtype == torch.uint8 and tuple(data["label"].shape) == (1, 14, 14, 10)
    assert set(torch.unique(data["label"]).tolist()) == {0, 1}
    assert int(data["label"].sum()) == int((label > 0).sum())
    ct, pet = image[0], image[1]
    # closed forms: CT (hu + 1000) / 2000, PET suv / 20
    assert float(ct.min()) == 0.0 and float(ct.max()) == pytest.approx((40 + 1000) / 2000)
    assert float(pet.max()) == pytest.approx(8 / 20)
    assert torch.isclose(pet[data["label"][0] == 0].max(), torch.tensor(1 / 20))
    assert np.allclose(data["original_pet_affine"].numpy(), affine)
    assert data["original_pet_shape"].tolist() == [20, 18, 12]
    assert torch.equal(data["preprocessed_affine"], torch.as_tensor(image.affine, dtype=torch.float64))
    assert np.all(np.diag(data["preprocessed_affine"].numpy())[:3] > 0)  # RAS


def test_multiclass_label_and_predict_pipeline(pet_grid_case: tuple) -> None:
    item, _, _ = pet_grid_case
    data = val_transforms(PreprocessConfig(binarize_label=False))(dict(item))
    assert set(torch.unique(data["label"]).tolist()) == {0, 1, 2}
    unlabelled = predict_transforms(PreprocessConfig())({k: v for k, v in item.items() if k != "label"})
    assert "label" not in unlabelled and unlabelled["image"].shape[0] == 2


@pytest.mark.parametrize("binarize", [True, False])
def test_restore_round_trip_lps_pet_grid(pet_grid_case: tuple, binarize: bool) -> None:
    item, label, affine = pet_grid_case
    data = preprocess_transforms(PreprocessConfig(binarize_label=binarize, crop_margin_voxels=0), True)(item)
    restored, restored_affine = restore_to_original(data["label"][0], data)
    expected = (label > 0).astype(np.uint8) if binarize else label
    assert restored.dtype == np.uint8 and restored.shape == label.shape
    np.testing.assert_array_equal(restored, expected)
    np.testing.assert_allclose(restored_affine, affine)
    channel_first, _ = restore_to_original(data["label"].numpy().astype(bool), data)
    np.testing.assert_array_equal(channel_first[0], expected.astype(bool))


def test_restore_round_trip_hecktor_ct_grid(hecktor_case: tuple) -> None:
    item, label_ct, ct_affine = hecktor_case
    data = preprocess_transforms(PreprocessConfig(binarize_label=False), True)(item)
    assert tuple(data["image"].shape[1:]) == (8, 8, 6)  # on the 4 mm PET grid (body fills it with margin)
    assert data["original_ct_shape"].tolist() == [40, 40, 32]
    restored, restored_affine = restore_to_original(data["label"][0], data, grid="ct")
    np.testing.assert_array_equal(restored, label_ct)
    np.testing.assert_allclose(restored_affine, ct_affine)
    on_pet, _ = restore_to_original(data["label"][0], data, grid="pet")
    assert int((on_pet == 1).sum()) == 8 and int((on_pet == 2).sum()) == 1


def test_restore_probabilities_linear_and_errors(pet_grid_case: tuple) -> None:
    item, _, _ = pet_grid_case
    data = predict_transforms(PreprocessConfig())(item)
    restored, _ = restore_to_original(data["image"], data, mode="linear")
    pet_suv = np.asarray(nib.load(item["pet"]).dataobj)
    assert restored.dtype == np.float32 and restored.shape == (2, 20, 18, 12)
    np.testing.assert_allclose(restored[1] * 20, pet_suv, atol=1e-4)
    with pytest.raises(ValueError, match="does not match"):
        restore_to_original(np.zeros((3, 3, 3)), data)
    with pytest.raises(ValueError, match="preprocessed_affine"):
        restore_to_original(np.zeros((3, 3, 3)), {"original_pet_affine": np.eye(4)})


def test_target_spacing_resamples_pet_grid(pet_grid_case: tuple) -> None:
    item, label, _ = pet_grid_case
    cfg = PreprocessConfig(target_spacing_mm=(6.0, 6.0, 8.0), crop_foreground=False)
    data = val_transforms(cfg)(item)
    assert tuple(data["image"].shape[1:]) == (10, 10, 6)  # MONAI: round((n - 1) * old / new) + 1
    np.testing.assert_allclose(np.abs(np.diag(data["preprocessed_affine"].numpy()))[:3], [6.0, 6.0, 8.0])
    restored, _ = restore_to_original(data["label"][0], data)
    assert restored.shape == label.shape


def test_train_patches_shapes_and_lesion_centring(pet_grid_case: tuple) -> None:
    item, _, _ = pet_grid_case
    cfg = PreprocessConfig(patch_size=(8, 8, 8), samples_per_volume=3, positive_fraction=1.0, flip_prob=0.5)
    pipeline = train_transforms(cfg)
    pipeline.set_random_state(seed=0)
    patches = pipeline(dict(item))
    assert len(patches) == 3
    for patch in patches:
        assert tuple(patch["image"].shape) == (2, 8, 8, 8) and patch["image"].dtype == torch.float32
        assert tuple(patch["label"].shape) == (1, 8, 8, 8) and patch["label"].dtype == torch.uint8
        assert int(patch["label"].sum()) > 0  # every patch is lesion-centred
    pipeline.set_random_state(seed=0)
    again = pipeline(dict(item))
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(patches, again, strict=True))


def test_default_sampling_pads_small_volumes(pet_grid_case: tuple) -> None:
    item, _, _ = pet_grid_case
    pipeline = train_transforms(PreprocessConfig(patch_size=(32, 16, 16)))
    pipeline.set_random_state(seed=1)
    patches = pipeline(dict(item))
    assert len(patches) == 2
    assert all(tuple(p["image"].shape) == (2, 32, 16, 16) for p in patches)


def test_cache_writes_then_reads_without_nifti(pet_grid_case: tuple, tmp_path: Path) -> None:
    item, _, _ = pet_grid_case
    cache = tmp_path / "cache"
    cfg = PreprocessConfig()
    first = make_dataset([item], val_transforms(cfg), cache)[0]
    files = list(cache.glob("*/*.pt"))
    assert len(files) == 1
    for path in (item["ct"], item["pet"], item["label"]):
        Path(path).unlink()  # a second pass can only succeed from the cache
    second = make_dataset([item], val_transforms(cfg), cache)[0]
    assert isinstance(second["image"], MetaTensor)
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["label"], second["label"])
    assert sorted(first) == sorted(second)
    np.testing.assert_allclose(second["image"].affine, first["image"].affine)
    batch = list_data_collate([first, second])
    assert tuple(batch["image"].shape[:2]) == (2, 2)
    other = make_dataset([item], val_transforms(PreprocessConfig(ct_window_hu=(-200.0, 300.0))), cache)
    assert other.cache_dir != files[0].parent
    same_preprocessing = make_dataset([item], val_transforms(PreprocessConfig(rotation_prob=0.1)), cache)
    assert same_preprocessing.cache_dir == files[0].parent


def test_cached_training_dataset_loads_batches(pet_grid_case: tuple, tmp_path: Path) -> None:
    item, _, _ = pet_grid_case
    cfg = PreprocessConfig(patch_size=(8, 8, 8), samples_per_volume=2)
    pipeline = train_transforms(cfg)
    pipeline.set_random_state(seed=0)
    dataset = make_dataset([item, dict(item, case_id="case1")], pipeline, tmp_path / "cache")
    written = []
    for _ in range(2):  # the second epoch reads the cache
        batches = list(DataLoader(dataset, batch_size=2, collate_fn=list_data_collate))
        assert tuple(batches[0]["image"].shape) == (4, 2, 8, 8, 8)
        written.append(sorted((tmp_path / "cache").glob("*/*.pt")))
    assert len(written[0]) == 2 and written[0] == written[1]  # one file per case, reused
    assert make_dataset([item], pipeline, None)[0][0]["image"].shape == (2, 8, 8, 8)


def test_real_sts_petct_case_on_pet_grid(shared_data: Path) -> None:
    case_dir = shared_data / "sts-petct" / "sts_images" / "STS_001"
    item = {
        "ct": str(case_dir / "CT" / "nifti" / "image" / "image.nii.gz"),
        "pet": str(case_dir / "PET" / "nifti" / "image" / "image.nii.gz"),
        "label": str(case_dir / "CT" / "nifti" / "mask" / "mask.nii.gz"),  # on the 0.98 mm CT grid
    }
    data = val_transforms(PreprocessConfig(crop_foreground=False))(item)
    assert tuple(data["image"].shape) == (2, 41, 43, 59)
    assert float(data["image"].min()) >= 0.0 and float(data["image"].max()) <= 1.0
    # SOURCE.md: the GTV voxelised on the PET grid has 5095 voxels
    assert abs(int(data["label"].sum()) - 5095) <= 0.05 * 5095
    pet_mask = np.asarray(nib.load(case_dir / "PET" / "nifti" / "mask" / "mask.nii.gz").dataobj)
    restored, _ = restore_to_original(data["label"][0], data)
    dice = 2 * np.sum(restored * pet_mask) / (restored.sum() + pet_mask.sum())
    assert dice > 0.95


def test_all_air_volume_is_kept_whole(tmp_path: Path) -> None:
    affine = np.eye(4)
    item = {
        "ct": _save(np.full((10, 10, 10), -1000.0, np.float32), affine, tmp_path / "ct.nii.gz"),
        "pet": _save(np.zeros((10, 10, 10), np.float32), affine, tmp_path / "pet.nii.gz"),
    }
    assert tuple(predict_transforms(PreprocessConfig())(item)["image"].shape) == (2, 10, 10, 10)


def test_lesion_free_case_gives_negative_patches(pet_grid_case: tuple, tmp_path: Path) -> None:
    item, label, affine = pet_grid_case
    item = dict(item, label=_save(np.zeros_like(label), affine, tmp_path / "empty_seg.nii.gz"))
    pipeline = train_transforms(PreprocessConfig(patch_size=(8, 8, 8)))
    pipeline.set_random_state(seed=0)
    with pytest.warns(UserWarning, match="Num foregrounds 0"):
        patches = pipeline(item)
    assert len(patches) == 2 and all(int(p["label"].sum()) == 0 for p in patches)
