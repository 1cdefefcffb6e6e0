"""What TAMW selects: weight recording hooks, the Table 3 shares, ``h2aseg analyze``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
import torch
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.data.layouts import read_dataset
from h2aseg.inference.tamw_record import DepthRecord, TamwRecorder, emphasis_shares
from h2aseg.models import build_model
from h2aseg.models.h2aseg import H2ASeg
from h2aseg.phantom.cohort import write_cohort
from h2aseg.pipeline.analyze import COLUMNS, analyze

CHANNELS = (2, 4, 8, 16, 32)
PATCH = (32, 32, 16)
# Positive foreground / background weights per depth: (PET channels, CT channels) out of C.
FORE_POSITIVE = {1: (1, 2), 2: (3, 1), 3: (8, 2), 4: (5, 16)}
BACK_POSITIVE = {1: (0, 1), 2: (2, 4), 3: (4, 7), 4: (16, 0)}


def _tiny(name: str = "h2aseg") -> H2ASeg:
    torch.manual_seed(0)
    return build_model(name, channels=CHANNELS, window_size=(4, 4, 2), dropout=0.0).eval()


def _set_signs(model: H2ASeg) -> H2ASeg:
    """Constant TAMW MLP outputs ±tanh(1): zero last layer, bias +1 on the first k PET/CT channels, else −1.

    TAMW subtracts the background MLP's output, so the paper's ``W_back`` is positive on the others.
    """
    with torch.no_grad():
        for depth, tamw in enumerate(model.tamw, 1):
            c = tamw.encoder_channels
            for mlp, positive in ((tamw.fore, FORE_POSITIVE[depth]), (tamw.back, BACK_POSITIVE[depth])):
                bias = -torch.ones_like(mlp.fc2.bias)
                bias[c : c + positive[0]] = 1.0  # PET channels follow the C CT channels
                bias[: positive[1]] = 1.0
                mlp.fc2.weight.zero_()
                mlp.fc2.bias.copy_(bias)
    return model


def _closed_form(depth: int) -> dict[str, float]:
    c = CHANNELS[depth - 1]
    (fore_pet, fore_ct), (back_pet, back_ct) = FORE_POSITIVE[depth], BACK_POSITIVE[depth]
    counts = {"fore_pet": fore_pet, "fore_ct": fore_ct, "back_pet": c - back_pet, "back_ct": c - back_ct}
    return {key: 100.0 * value / c for key, value in counts.items()}


@pytest.mark.parametrize("name", ["h2aseg", "h2aseg-tamw", "h2aseg-pet-only"])
def test_hooks_leave_the_outputs_bit_identical_and_go_away(name: str) -> None:
    model = _tiny(name)
    x = torch.randn(2, 2, *PATCH)
    with torch.no_grad():
        plain = model.forward_deep(x)
        with TamwRecorder(model, feature_depths=(2,)) as recorder:
            hooked = model.forward_deep(x)
        after = model.forward_deep(x)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(plain, hooked, after, strict=True))
    assert all(not m._forward_hooks for m in model.modules())
    network = next(m for m in model.modules() if isinstance(m, H2ASeg))
    for depth, record in recorder.depths.items():
        c, f = CHANNELS[depth - 1], 2 * CHANNELS[depth]
        assert [w.shape for w in record.fore] == [(2, 2 * c + f)] == [w.shape for w in record.back]
        assert record.weights("fore", "pet").shape == (2, c)
    assert len(recorder.depths[2].features) == 1 and not recorder.depths[1].features
    assert recorder.depths[2].features[0].shape == (2, 2 * CHANNELS[1], 16, 16, 8)
    assert network.tamw[1].encoder_channels == CHANNELS[1]


def test_models_without_tamw_are_refused() -> None:
    with pytest.raises(ValueError, match="no TAMW module"):
        TamwRecorder(_tiny("h2aseg-mcsa"))
    with pytest.raises(ValueError, match=r"feature depths must lie in 1\.\.4"):
        TamwRecorder(_tiny(), feature_depths=(5,))


def test_shares_of_hand_set_weights_equal_the_closed_form() -> None:
    model = _set_signs(_tiny())
    with torch.no_grad(), TamwRecorder(model) as recorder:
        model(torch.randn(3, 2, *PATCH))
        model(torch.randn(1, 2, *PATCH))
    shares = emphasis_shares(recorder.depths)
    for depth in range(1, 5):
        assert shares[depth] == pytest.approx(_closed_form(depth), abs=1e-9)


def test_shares_count_every_window_and_channel() -> None:
    # Two windows of C = 4 channels; PET (+, +, -, 0) and (+, -, -, -): 3 of 8 positive (0 is not).
    # The background MLP gives the same numbers, which TAMW subtracts: W_back = -fore.
    fore = torch.tensor(
        [[0.5, -0.1, -0.2, -0.3, 0.9, 0.2, -0.4, 0.0], [0.1, 0.2, 0.3, -0.1, 0.3, -0.5, -0.6, -0.7]]
    )
    record = DepthRecord(encoder_channels=4, fore=[fore[:1], fore[1:]], back=[fore[:1], fore[1:]])
    shares = emphasis_shares({1: record})[1]
    assert shares == {"fore_pet": 37.5, "fore_ct": 50.0, "back_pet": 50.0, "back_ct": 50.0}
    assert record.weights("back", "pet")[0].tolist() == pytest.approx([-0.9, -0.2, 0.4, 0.0])


@pytest.fixture(scope="module")
def phantom_and_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("analyze")
    write_cohort(folder / "data", n_cases=2, seed=0, layout="flat", preset="small")
    return folder / "data", _write_checkpoint(folder / "tiny.ckpt", _set_signs(_tiny()), "h2aseg")


def _write_checkpoint(path: Path, model: torch.nn.Module, name: str) -> Path:
    config = {
        "model": {"name": name, "channels": list(CHANNELS), "window_size": [4, 4, 2], "dropout": 0.0},
        "preprocess": {"patch_size": [64, 64, 32]},
        "inference": {"sw_batch_size": 2, "overlap": 0.0, "mode": "constant", "tta_flips": False},
    }
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state, "epoch": 0}, path)
    return path


def test_analyze_cli_writes_the_closed_form_table_and_the_pictures(
    phantom_and_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    data, checkpoint = phantom_and_checkpoint
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["analyze", "--model", str(checkpoint), "--dataset", str(data), "--out", str(out), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    table = json.loads((out / "tamw_table.json").read_text())
    assert sorted(table["cases"]) == ["phantom_000", "phantom_001"]
    for depth in range(1, 5):
        expected = _closed_form(depth)
        for column in COLUMNS:
            assert table["depths"][str(depth)][column] == pytest.approx(
                {"mean": expected[column], "std": 0.0}
            )
    assert all(case["windows"] >= 1 for case in table["cases"].values())
    markdown = (out / "tamw_table.md").read_text()
    fore_pet, fore_ct = _closed_form(3)["fore_pet"], _closed_form(3)["fore_ct"]
    assert f"| 3 | 8 | {fore_pet:.2f} ± 0.00 | {fore_ct:.2f} ± 0.00 |" in markdown
    assert table["channels_per_modality"] == {"1": 2, "2": 4, "3": 8, "4": 16}
    with_lesions = [case.case_id for case in read_dataset(data) if nib.load(case.label).get_fdata().any()]
    pictures = sorted(p.name for p in out.glob("tamw_features_*.png"))
    assert (
        pictures
        == [f"tamw_features_{case}.png" for case in with_lesions]
        == ["tamw_features_phantom_000.png"]
    )
    assert not list(out.glob(".tmp-*"))


def test_analyze_refuses_a_model_without_tamw_and_a_split_without_these_cases(
    phantom_and_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    data, checkpoint = phantom_and_checkpoint
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": [], "test": ["other"], "seed": 0, "ratios": [6, 2, 2]}))
    with pytest.raises(ValueError, match="none of its test cases"):
        analyze(checkpoint, data, tmp_path / "out", split_file=split, device="cpu")
    assert not (tmp_path / "out" / "tamw_table.json").exists()
    no_tamw = _write_checkpoint(tmp_path / "mcsa.ckpt", _tiny("h2aseg-mcsa"), "h2aseg-mcsa")
    with pytest.raises(ValueError, match="no TAMW module"):
        analyze(no_tamw, data, tmp_path / "out", device="cpu")
