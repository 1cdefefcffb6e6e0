"""Tests of the fast training-patch path: slice-wise Z rotation, cached crop indices, mmap cache."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Rotate
from monai.transforms.utils import map_binary_to_indices

from h2aseg.data.augment import RandRotateZd, rotate_about_z
from h2aseg.data.transforms import INDEX_KEYS, PreprocessConfig, make_dataset, train_transforms

LESION = (slice(12, 16), slice(10, 14), slice(8, 12))


@pytest.mark.parametrize("shape", [(2, 20, 13, 5), (1, 17, 30, 4)])
@pytest.mark.parametrize("angle", [0.3, -0.7, 0.785])
def test_rotation_about_z_equals_monai_rotate(shape: tuple[int, ...], angle: float) -> None:
    volume = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    for mode, tolerance in (("bilinear", 1e-5), ("nearest", 0.0)):
        expected = Rotate(angle=(0.0, 0.0, angle), mode=mode, padding_mode="zeros")(
            MetaTensor(volume, affine)
        )
        torch.testing.assert_close(
            rotate_about_z(volume, angle, mode), expected.as_tensor(), atol=tolerance, rtol=0
        )
    transform = RandRotateZd(["image"], range_z=1.0, prob=1.0)
    transform.randomize()
    angle_drawn = transform.angle
    transform.randomize = lambda data=None: None  # keep the drawn angle for the comparison
    rotated = transform({"image": MetaTensor(volume, affine)})["image"]
    expected = Rotate(angle=(0.0, 0.0, angle_drawn), padding_mode="zeros")(MetaTensor(volume, affine))
    torch.testing.assert_close(rotated.affine, expected.affine)


def test_random_rotation_draws_like_rand_rotated() -> None:
    transform = RandRotateZd(["image", "label"], range_z=0.5, prob=0.8, mode=["bilinear", "nearest"])
    transform.set_random_state(seed=0)
    image, label = torch.rand(2, 8, 8, 4), (torch.rand(1, 8, 8, 4) > 0.5).to(torch.uint8)
    rotated, angles = 0, []
    for _ in range(400):
        out = transform({"image": image, "label": label})
        rotated += transform._do_transform
        angles.append(transform.angle)
        assert out["label"].dtype == torch.uint8 and set(out["label"].unique().tolist()) <= {0, 1}
    assert 0.75 < rotated / 400 < 0.85  # binomial(400, 0.8): sd 0.02
    assert max(abs(a) for a in angles) <= 0.5 and abs(np.mean(angles)) < 0.05


def _tiny_case(folder: Path) -> dict[str, str]:
    """40 x 36 x 24 voxels: air around a 20 x 20 x 16 body with one 4 x 4 x 4 lesion."""
    ct_hu = np.full((40, 36, 24), -1000.0, np.float32)
    pet_suv = np.zeros((40, 36, 24), np.float32)
    ct_hu[4:36, 4:32, 2:22], pet_suv[4:36, 4:32, 2:22] = 40.0, 1.0
    label = np.zeros((40, 36, 24), np.uint8)
    label[LESION] = 1
    pet_suv[LESION] = 8.0
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    item = {"case_id": "tiny"}
    for key, array in (("ct", ct_hu), ("pet", pet_suv), ("label", label)):
        nib.save(nib.Nifti1Image(array, affine), folder / f"{key}.nii.gz")
        item[key] = str(folder / f"{key}.nii.gz")
    return item


def test_cached_indices_equal_recomputed_and_patches_hit_lesions_at_the_set_rate(tmp_path: Path) -> None:
    item = _tiny_case(tmp_path)
    cfg = PreprocessConfig(patch_size=(8, 8, 8), samples_per_volume=4, positive_fraction=0.5, augment=False)
    pipeline = train_transforms(cfg)
    deterministic = pipeline.transforms[
        : [type(t).__name__ for t in pipeline.transforms].index("RandCropByPosNegLabeld")
    ]
    data = dict(item)
    for transform in deterministic:
        data = transform(data)
    fg, bg = map_binary_to_indices(data["label"], data["image"], image_threshold=0.0)
    assert data[INDEX_KEYS[0]].dtype == data[INDEX_KEYS[1]].dtype == torch.int32
    assert torch.equal(data[INDEX_KEYS[0]].long(), torch.as_tensor(fg).long())
    assert torch.equal(data[INDEX_KEYS[1]].long(), torch.as_tensor(bg).long())
    assert len(fg) == 64 and len(bg) > 1000

    dataset = make_dataset([item], pipeline, tmp_path / "cache")
    pipeline.set_random_state(seed=0)
    first = dataset[0]  # computed and written
    pipeline.set_random_state(seed=0)
    cached = dataset[0]  # read back, memory-mapped
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(first, cached, strict=True))
    centred = 0
    for _ in range(50):
        for patch in dataset[0]:
            assert tuple(patch["image"].shape) == (2, 8, 8, 8) and tuple(patch["label"].shape) == (1, 8, 8, 8)
            centred += int(patch["label"][0, 4, 4, 4])
    assert 0.4 < centred / 200 < 0.6  # lesion-centred with probability 0.5: sd 0.035
