"""Prediction: checkpoints, sliding window + TTA, original geometry, outputs, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from h2aseg.inference import export as export_module
from h2aseg.inference.export import check_case_inputs
from h2aseg.inference.predictor import Predictor, flip_combinations
from h2aseg.models import build_model
from h2aseg.pipeline.predict import case_id_from_path, predict

TINY_UNET = {"name": "unet3d", "features": [2, 2, 4, 4, 8, 2]}
# PET voxel i runs posterior (-y), j to the patient's left (-x), k superior: neither RAS nor RAS order.
PET_AFFINE = np.array([[0.0, -4.0, 0.0, 40.0], [-4.0, 0.0, 0.0, 50.0], [0.0, 0.0, 3.0, -20.0], [0, 0, 0, 1]])
LESION_SUV = 8.0


def _config(patch: int = 16, **inference: object) -> dict:
    return {
        "model": dict(TINY_UNET),
        "preprocess": {"patch_size": [patch, patch, patch], "crop_margin_voxels": 1},
        "inference": {
            "sw_batch_size": 2,
            "overlap": 0.25,
            "mode": "gaussian",
            "tta_flips": False,
            **inference,
        },
    }


class PetThreshold(nn.Module):
    """Pointwise stand-in network: lesion where the scaled PET exceeds ``level`` (SUV 4 of [0, 20])."""

    out_channels = 2
    output_activation = "softmax"

    def __init__(self, level: float = 0.2) -> None:
        super().__init__()
        self.level = level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = (x[:, 1:2] - self.level) * 100.0
        return torch.cat([torch.zeros_like(lesion), lesion], dim=1)


class PetSigmoid(PetThreshold):
    out_channels = 1
    output_activation = "sigmoid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 1:2] - self.level) * 100.0


def _write_checkpoint(path: Path, config: dict, model: nn.Module) -> Path:
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state, "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model(TINY_UNET["name"], **{k: v for k, v in TINY_UNET.items() if k != "name"})
    return _write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", _config(patch=32), model)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """A PET (non-RAS affine, 4x4x3 mm) with one 3x3x3 lesion, and a CT on a finer, larger RAS grid."""
    folder = tmp_path_factory.mktemp("case")
    pet_suv = np.zeros((12, 14, 10), dtype=np.float32)
    pet_suv[1:-1, 1:-1, 1:-1] = 1.0
    pet_suv[5:8, 6:9, 4:7] = LESION_SUV
    corners = nib.affines.apply_affine(PET_AFFINE, np.array([[0, 0, 0], [11, 13, 9]]))
    ct_origin = corners.min(axis=0) - 6.0
    ct_shape = np.ceil((corners.max(axis=0) - corners.min(axis=0) + 12.0) / 2.0).astype(int)
    ct_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ct_affine[:3, 3] = ct_origin
    ct_hu = np.full(tuple(ct_shape), -1000.0, dtype=np.float32)
    ct_hu[3:-3, 3:-3, 3:-3] = 20.0
    pet_path, ct_path = folder / "demo_pet.nii.gz", folder / "demo_ct.nii.gz"
    nib.save(nib.Nifti1Image(pet_suv, PET_AFFINE), pet_path)
    nib.save(nib.Nifti1Image(ct_hu, ct_affine), ct_path)
    return ct_path, pet_path, pet_suv > 4.0


def test_flip_combinations() -> None:
    assert flip_combinations(False) == ((),)
    assert flip_combinations(True)[0] == ()
    assert len(set(flip_combinations(True))) == 8
    assert flip_combinations([(1, 0), (2,), (0, 1)]) == ((), (2,), (0, 1))
    with pytest.raises(ValueError, match="axes"):
        flip_combinations([(3,)])


@pytest.mark.parametrize("network", [PetThreshold(), PetSigmoid()])
def test_predict_volume_of_a_pointwise_net_is_its_probability_with_and_without_tta(
    network: nn.Module,
) -> None:
    image = torch.rand(1, 2, 20, 18, 13, generator=torch.Generator().manual_seed(0)) * 0.4
    expected_lesion = torch.sigmoid((image[:, 1] - 0.2) * 100.0)
    for tta in (False, True):
        probabilities = Predictor(network, _config(), tta=tta).predict_volume(image)
        assert probabilities.shape == (1, network.out_channels, 20, 18, 13)
        torch.testing.assert_close(probabilities[:, -1], expected_lesion, atol=1e-5, rtol=0)


def test_predict_case_restores_the_pet_geometry_and_writes_reports(case: tuple, tmp_path: Path) -> None:
    ct_path, pet_path, lesion = case
    result = Predictor(PetThreshold(), _config()).predict_case(ct_path, pet_path, tmp_path / "out", "demo")

    written = nib.load(result.mask)
    assert written.shape == lesion.shape
    np.testing.assert_array_equal(written.affine, PET_AFFINE)
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), lesion.astype(np.uint8))
    with result.lesions_csv.open() as stream:
        (row,) = list(csv.DictReader(stream))
    assert float(row["volume_ml"]) == pytest.approx(27 * 4 * 4 * 3 / 1000)
    assert float(row["suv_max"]) == LESION_SUV and float(row["suv_mean"]) == LESION_SUV
    summary = json.loads(result.summary_json.read_text())
    assert summary["lesion_count"] == 1 and summary == {**summary, **result.summary}
    assert result.figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.probabilities is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "demo_lesions.csv",
        "demo_mip.png",
        "demo_seg.nii.gz",
        "demo_summary.json",
    ]


def test_predict_case_on_the_ct_grid_with_probabilities(case: tuple, tmp_path: Path) -> None:
    ct_path, pet_path, lesion = case
    result = Predictor(PetThreshold(), _config()).predict_case(
        ct_path, pet_path, tmp_path, "demo", grid="ct", save_probabilities=True
    )
    ct_image, written = nib.load(ct_path), nib.load(result.mask)
    assert written.shape == ct_image.shape
    np.testing.assert_array_equal(written.affine, ct_image.affine)
    mask_ct = np.asarray(written.dataobj) > 0
    # The 12 x 12 x 9 mm lesion covers about 6 x 6 x 4.5 CT voxels of 2 mm, centred where it is on the PET.
    assert 100 <= mask_ct.sum() <= 300
    centre_ct = nib.affines.apply_affine(ct_image.affine, np.argwhere(mask_ct).mean(axis=0))
    centre_pet = nib.affines.apply_affine(PET_AFFINE, np.argwhere(lesion).mean(axis=0))
    np.testing.assert_allclose(centre_ct, centre_pet, atol=2.0)
    probabilities = nib.load(result.probabilities)
    assert probabilities.shape == ct_image.shape and probabilities.get_data_dtype() == np.float32
    assert json.loads(result.summary_json.read_text())["lesion_count"] == 1


def test_checkpoint_round_trip_and_tta(checkpoint: Path, case: tuple, tmp_path: Path) -> None:
    ct_path, pet_path, lesion = case
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu", tta=[(0,)], overlap=0.5)
    assert predictor.flips == ((), (0,)) and predictor.overlap == 0.5 and predictor.sw_batch_size == 2
    result = predictor.predict_case(ct_path, pet_path, tmp_path, "tta")
    assert nib.load(result.mask).shape == lesion.shape


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    other = build_model("unet3d", features=[2, 2, 4, 4, 16, 2])
    path = _write_checkpoint(tmp_path / "other.ckpt", _config(), other)
    with pytest.raises(ValueError, match=r"other\.ckpt: its weights do not fit model 'unet3d'"):
        Predictor.from_checkpoint(path, device="cpu")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a checkpoint", "not a checkpoint that loads with weights_only=True"),
        ({"state_dict": {}}, "no resolved config"),
        ({"hyper_parameters": {"config": _config()}}, "no state_dict"),
    ],
)
def test_broken_checkpoints_are_clear_errors(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "broken.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=f"broken.ckpt: {message}"):
        Predictor.from_checkpoint(path, device="cpu")
    with pytest.raises(ValueError, match="no such checkpoint"):
        Predictor.from_checkpoint(tmp_path / "missing.ckpt")


def test_nothing_half_written_when_a_case_fails(
    case: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_figure(*args: object, **kwargs: object) -> None:
        raise RuntimeError("figure failed")

    monkeypatch.setattr(export_module, "save_nifti_case_figure", broken_figure)
    ct_path, pet_path, _ = case
    with pytest.raises(RuntimeError, match="figure failed"):
        Predictor(PetThreshold(), _config()).predict_case(ct_path, pet_path, tmp_path, "demo")
    assert list(tmp_path.iterdir()) == []


def test_predict_validates_its_inputs(checkpoint: Path, case: tuple, tmp_path: Path) -> None:
    ct_path, pet_path, _ = case
    with pytest.raises(ValueError, match="exactly one input"):
        predict(checkpoint, tmp_path, ct=ct_path, pet=pet_path, dataset=tmp_path)
    with pytest.raises(ValueError, match=r"NIfTI pair: ct and pet are both needed \(pet missing\)") as error:
        predict(checkpoint, tmp_path, ct=ct_path)
    assert "--" not in str(error.value)  # library errors name arguments, not CLI flags
    with pytest.raises(ValueError, match=r"nope\.nii\.gz: missing CT file"):
        predict(checkpoint, tmp_path, ct=tmp_path / "nope.nii.gz", pet=pet_path, device="cpu")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"file\.txt: the output folder is a file"):
        predict(checkpoint, a_file, ct=ct_path, pet=pet_path)


def test_ct_and_pet_that_do_not_overlap_are_rejected(case: tuple, tmp_path: Path) -> None:
    _, pet_path, _ = case
    far_ct = tmp_path / "far_ct.nii.gz"
    far_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    far_affine[:3, 3] = (0.0, 0.0, 900.0)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), far_affine), far_ct)
    with pytest.raises(ValueError, match="do not overlap in space"):
        check_case_inputs(far_ct, pet_path)


def test_predict_one_pair_end_to_end(checkpoint: Path, case: tuple, tmp_path: Path) -> None:
    ct_path, pet_path, lesion = case
    (result,) = predict(checkpoint, tmp_path / "out", ct=ct_path, pet=pet_path, device="cpu")
    assert result.case_id == "demo"
    assert nib.load(result.mask).shape == lesion.shape


def test_case_id_from_path() -> None:
    assert case_id_from_path(Path("/d/PETCT_0af7_pet.nii.gz")) == "PETCT_0af7"
    assert case_id_from_path(Path("/d/HN-001__PT.nii.gz")) == "HN-001__PT"
    assert case_id_from_path(Path("/data/STS_001/PET/nifti/image/image.nii.gz")) == "STS_001"
    assert case_id_from_path(Path("/data/p7/2001-03-04/SUV.nii.gz")) == "2001-03-04"


def _sts_case(shared_data: Path, name: str) -> Path:
    return shared_data / "sts-petct" / "sts_images" / name


def test_real_pet_ct_on_different_grids_keeps_each_files_geometry(tmp_path: Path, shared_data: Path) -> None:
    """STS_002: PET 5.47 mm and CT 0.98 mm, both LAS with a qform only (``sts-petct/SOURCE.md``)."""
    folder = _sts_case(shared_data, "STS_002")
    ct_path, pet_path = (folder / modality / "nifti" / "image" / "image.nii.gz" for modality in ("CT", "PET"))
    predictor = Predictor(PetThreshold(level=0.25), _config())  # SUV >= 5
    for grid, source in (("pet", pet_path), ("ct", ct_path)):
        result = predictor.predict_case(ct_path, pet_path, tmp_path / grid, "STS_002", grid=grid)
        original, written = nib.load(source), nib.load(result.mask)
        assert written.shape == original.shape
        np.testing.assert_array_equal(written.affine, original.affine)
        assert int(written.header["qform_code"]) == int(original.header["qform_code"])
    pet_suv = nib.load(pet_path).get_fdata()
    np.testing.assert_array_equal(
        np.asarray(nib.load(tmp_path / "pet" / "STS_002_seg.nii.gz").dataobj), pet_suv > 5.0
    )


def test_predict_every_case_of_a_dataset_folder(checkpoint: Path, case: tuple, tmp_path: Path) -> None:
    ct_path, _, lesion = case  # the fixture folder is a flat-layout dataset of one case
    (result,) = predict(checkpoint, tmp_path, dataset=ct_path.parent, device="cpu")
    assert result.case_id == "demo" and nib.load(result.mask).shape == lesion.shape


def test_predict_from_dicom_series(checkpoint: Path, tmp_path: Path, shared_data: Path) -> None:
    """STS_002 CT and PET DICOM (PET already in SUV, ``sts-petct/SOURCE.md``), converted on the fly."""
    folder = _sts_case(shared_data, "STS_002")
    (result,) = predict(
        checkpoint,
        tmp_path,
        ct_dicom=folder / "CT" / "dicom" / "image",
        pet_dicom=folder / "PET" / "dicom" / "image",
        device="cpu",
    )
    assert result.case_id == "STS_002"
    assert not list(tmp_path.glob(".h2aseg-dicom-*"))  # the converted NIfTI do not outlive the run
    reference = nib.load(folder / "PET" / "nifti" / "image" / "image.nii.gz")
    assert nib.load(result.mask).shape == reference.shape
    np.testing.assert_allclose(nib.load(result.mask).affine, reference.affine, atol=1e-3)


@pytest.mark.slow
def test_h2aseg_checkpoint_with_a_sigmoid_head(case: tuple, tmp_path: Path) -> None:
    ct_path, pet_path, lesion = case
    model_config = {"name": "h2aseg", "channels": [2, 4, 8, 16, 32], "output_activation": "sigmoid"}
    config = {**_config(), "model": model_config, "preprocess": {"patch_size": [32, 32, 16]}}
    torch.manual_seed(0)
    model = build_model(**model_config)
    predictor = Predictor.from_checkpoint(_write_checkpoint(tmp_path / "h2aseg.ckpt", config, model), "cpu")
    assert predictor.activation == "sigmoid" and predictor.out_channels == 1

    result = predictor.predict_case(ct_path, pet_path, tmp_path / "out", "demo", save_probabilities=True)

    probabilities = np.asarray(nib.load(result.probabilities).dataobj)
    assert probabilities.shape == lesion.shape
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0


def test_checkpoint_with_a_config_of_the_old_dict_schema_loads(case: tuple, tmp_path: Path) -> None:
    """Saved before the OmegaConf schema: every section as plain dicts, ``preprocess.cache_dir``
    (retired) present and ``trainer.max_steps`` (added since) absent."""
    torch.manual_seed(0)
    model = build_model(TINY_UNET["name"], **{k: v for k, v in TINY_UNET.items() if k != "name"})
    old = _config(patch=32)
    old["preprocess"]["cache_dir"] = None
    old["trainer"] = {"max_epochs": 200, "batch_size": 2, "precision": "32-true", "devices": "auto"}
    old["classes"] = {0: "background", 1: "lesion"}
    path = _write_checkpoint(tmp_path / "old.ckpt", old, model)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert predictor.roi_size == (32, 32, 32) and predictor.overlap == 0.25
    ct_path, pet_path, lesion = case
    result = predictor.predict_case(ct_path, pet_path, tmp_path / "out", "old")
    assert nib.load(result.mask).shape == lesion.shape
