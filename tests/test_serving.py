"""Export for serving (ONNX, TorchScript) and ensembles of checkpoints."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.inference.ensemble import EnsemblePredictor, load_ensemble
from h2aseg.inference.predictor import Predictor
from h2aseg.inference.serving import OnnxNetwork, TorchScriptNetwork, export_model, load_predictor
from h2aseg.models import build_model
from h2aseg.phantom.cohort import write_cohort

pytest.importorskip("onnxruntime", reason="the serving extra (onnx, onnxruntime) is not installed")

TINY_UNET = {"name": "unet3d", "features": [2, 2, 4, 4, 8, 2]}
PATCH = (32, 32, 16)
CLASSES = {0: "background", 1: "lesion"}


def _config(model: dict, classes: dict = CLASSES) -> dict:
    return {
        "model": dict(model),
        "preprocess": {"patch_size": list(PATCH), "crop_margin_voxels": 1},
        "inference": {"sw_batch_size": 3, "overlap": 0.25, "mode": "gaussian", "tta_flips": False},
        "classes": dict(classes),
    }


def _checkpoint(path: Path, model_config: dict, seed: int, classes: dict = CLASSES) -> Path:
    torch.manual_seed(seed)
    model = build_model(model_config["name"], **{k: v for k, v in model_config.items() if k != "name"})
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": _config(model_config, classes)}, "state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serving")
    checkpoint = _checkpoint(folder / "a.ckpt", TINY_UNET, seed=0)
    return {
        "ckpt": checkpoint,
        "other": _checkpoint(folder / "b.ckpt", TINY_UNET, seed=1),
        "onnx": export_model(checkpoint, folder / "a.onnx", format="onnx"),
        "pt": export_model(checkpoint, folder / "a.pt", format="torchscript"),
    }


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    (case,) = write_cohort(tmp_path_factory.mktemp("phantom"), n_cases=1, seed=3, layout="flat")
    return case.ct, case.pet


def _torch_logits(checkpoint: Path, image: torch.Tensor) -> np.ndarray:
    model = Predictor.from_checkpoint(checkpoint, "cpu").model
    with torch.no_grad():
        return model(image).numpy()


@pytest.mark.parametrize("kind", ["onnx", "pt"])
def test_exported_logits_equal_pytorch_with_a_dynamic_batch(files: dict, kind: str) -> None:
    network = OnnxNetwork(files[kind]) if kind == "onnx" else TorchScriptNetwork(files[kind])
    assert (network.out_channels, network.output_activation) == (2, "softmax")
    assert network.config["classes"] == CLASSES and network.config["preprocess"]["patch_size"] == list(PATCH)
    for batch in (1, 3):
        image = torch.randn(batch, 2, *PATCH, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            logits = network(image).numpy()
        assert logits.shape == (batch, 2, *PATCH)
        np.testing.assert_allclose(logits, _torch_logits(files["ckpt"], image), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_h2aseg_exports_to_onnx_with_its_attention(tmp_path: Path) -> None:
    config = {"name": "h2aseg", "channels": [2, 4, 8, 16, 32]}
    checkpoint = _checkpoint(tmp_path / "h2aseg.ckpt", config, seed=0)
    network = OnnxNetwork(export_model(checkpoint, tmp_path / "h2aseg.onnx"))
    image = torch.randn(2, 2, *PATCH, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(network(image).numpy(), _torch_logits(checkpoint, image), atol=1e-4, rtol=0)


def test_predict_with_onnx_gives_the_checkpoints_mask(files: dict, phantom: tuple, tmp_path: Path) -> None:
    ct, pet = phantom
    results = {}
    for kind in ("ckpt", "onnx"):
        predictor = load_predictor(files[kind], "cpu")
        results[kind] = predictor.predict_case(ct, pet, tmp_path / kind, "case", save_probabilities=True)
    assert isinstance(load_predictor(files["onnx"], "cpu").model, OnnxNetwork)
    masks = {kind: np.asarray(nib.load(result.mask).dataobj) for kind, result in results.items()}
    probabilities = {kind: nib.load(result.probabilities).get_fdata() for kind, result in results.items()}
    np.testing.assert_allclose(probabilities["onnx"], probabilities["ckpt"], atol=1e-4)
    # Float rounding (~1e-6) can only flip a voxel whose lesion probability sits at the 0.5 boundary.
    undecided = np.abs(probabilities["ckpt"] - 0.5) < 1e-4
    assert undecided.mean() < 1e-3
    np.testing.assert_array_equal(masks["onnx"][~undecided], masks["ckpt"][~undecided])
    assert 0 < masks["ckpt"].sum() < masks["ckpt"].size  # a random network: some voxels of each label


def test_export_refusals(files: dict, tmp_path: Path) -> None:
    import onnx

    result = CliRunner().invoke(
        app, ["export", "--model", str(files["ckpt"]), "--out", str(tmp_path / "m.pt")]
    )
    assert result.exit_code == 1 and "must end in .onnx" in result.output
    assert not (tmp_path / "m.pt").exists()
    bare = onnx.load(str(files["onnx"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match=r"bare\.onnx: no h2aseg\.config metadata"):
        OnnxNetwork(tmp_path / "bare.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.onnx: not a readable ONNX model"):
        OnnxNetwork(tmp_path / "junk.onnx")


def test_ensemble_of_two_checkpoints_is_the_mean_of_their_probabilities(files: dict) -> None:
    image = torch.rand(1, 2, 40, 36, 20, generator=torch.Generator().manual_seed(0))
    single = {name: load_predictor(files[name], "cpu").predict_volume(image) for name in ("ckpt", "other")}
    assert not torch.allclose(single["ckpt"], single["other"], atol=1e-3)
    ensemble = load_ensemble([files["ckpt"], files["other"]], "cpu")
    assert isinstance(ensemble, EnsemblePredictor)
    torch.testing.assert_close(ensemble.predict_volume(image), (single["ckpt"] + single["other"]) / 2)
    mixed = load_ensemble([files["ckpt"], files["onnx"]], "cpu")  # a checkpoint and its export
    torch.testing.assert_close(mixed.predict_volume(image), single["ckpt"], atol=1e-5, rtol=0)


def test_ensemble_of_one_checkpoint_twice_gives_its_mask(files: dict, phantom: tuple, tmp_path: Path) -> None:
    ct, pet = phantom
    masks = []
    for models in ([files["ckpt"]], [files["ckpt"], files["ckpt"]]):
        arguments = ["predict", "--ct", str(ct), "--pet", str(pet), "--device", "cpu"]
        out = tmp_path / str(len(models))
        for model in models:
            arguments += ["--model", str(model)]
        result = CliRunner().invoke(app, [*arguments, "--out", str(out)])
        assert result.exit_code == 0, result.output
        (mask,) = out.glob("*_seg.nii.gz")
        masks.append(np.asarray(nib.load(mask).dataobj))
    np.testing.assert_array_equal(masks[1], masks[0])


def test_ensemble_refuses_models_of_other_classes(files: dict, tmp_path: Path) -> None:
    other = _checkpoint(tmp_path / "c.ckpt", TINY_UNET, seed=1, classes={0: "background", 1: "tumour"})
    with pytest.raises(ValueError, match=r"c\.ckpt: its classes differ from .*a\.ckpt's"):
        load_ensemble([files["ckpt"], other], "cpu")
