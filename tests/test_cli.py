"""The command line: every command is wired, and bad input gives one line and exit code 1."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from h2aseg.cli import app

runner = CliRunner()

COMMANDS = [
    "demo",
    "phantom",
    "convert-dicom",
    "check-data",
    "train",
    "predict",
    "evaluate",
    "analyze",
    "bench",
]


def _error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines, "the command printed nothing"
    return lines[-1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_phantom_then_check_data_is_clean(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["phantom", "--out", str(tmp_path / "cohort"), "--cases", "3", "--layout", "nnunet"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cohort" / "imagesTr").glob("*_0001.nii.gz"))) == 3
    result = runner.invoke(app, ["check-data", str(tmp_path / "cohort")])
    assert result.exit_code == 0, result.output


def test_phantom_mimics_change_the_pet_only(tmp_path: Path) -> None:
    """``--mimics`` adds hot foci to the PET and leaves the CT and the masks as they were."""
    for name, extra in (("plain", []), ("mimics", ["--mimics", "3"])):
        result = runner.invoke(
            app, ["phantom", "--out", str(tmp_path / name), "--cases", "2", "--layout", "flat", *extra]
        )
        assert result.exit_code == 0, result.output
    for suffix in ("ct", "seg", "pet"):
        for case in ("phantom_000", "phantom_001"):
            plain, mimicked = (
                np.asarray(nib.load(tmp_path / folder / f"{case}_{suffix}.nii.gz").dataobj)
                for folder in ("plain", "mimics")
            )
            assert np.array_equal(plain, mimicked) == (suffix != "pet"), (case, suffix)
    result = runner.invoke(app, ["phantom", "--out", str(tmp_path / "bad"), "--mimics", "-1"])
    assert result.exit_code == 1
    assert "--mimics must be 0 or more" in _error_line(result)


def test_check_data_reports_a_missing_partner(tmp_path: Path) -> None:
    runner.invoke(app, ["phantom", "--out", str(tmp_path), "--cases", "2", "--layout", "flat"])
    removed = sorted(tmp_path.glob("*_pet.nii.gz"))[0]
    removed.unlink()
    result = runner.invoke(app, ["check-data", str(tmp_path)])
    assert result.exit_code == 1
    assert "problem" in result.output


def test_predict_with_a_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "predict",
            "--model",
            str(tmp_path / "none.ckpt"),
            "--ct",
            "a.nii.gz",
            "--pet",
            "b.nii.gz",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    assert _error_line(result).startswith("error:")
    assert "none.ckpt" in _error_line(result)
    assert not (tmp_path / "out").exists()


def test_predict_with_an_unreadable_checkpoint(tmp_path: Path) -> None:
    checkpoint = tmp_path / "broken.ckpt"
    checkpoint.write_bytes(b"not a checkpoint")
    result = runner.invoke(
        app,
        ["predict", "--model", str(checkpoint), "--dataset", str(tmp_path), "--out", str(tmp_path / "out")],
    )
    assert result.exit_code == 1
    assert "broken.ckpt" in _error_line(result)


def test_evaluate_with_missing_predictions(tmp_path: Path) -> None:
    truth = tmp_path / "truth"
    truth.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), truth / "case1.nii.gz")
    (tmp_path / "pred").mkdir()
    result = runner.invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(truth)])
    assert result.exit_code == 1
    assert "case1" in _error_line(result)


def test_demo_refuses_an_output_folder_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    target.write_text("I am a file")
    result = runner.invoke(app, ["demo", "--out", str(target)])
    assert result.exit_code == 1
    assert "is a file" in _error_line(result)
    assert target.read_text() == "I am a file"


def test_train_with_a_bad_override(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("model: {name: h2aseg}\n")
    result = runner.invoke(app, ["train", "--config", str(config), "trainer.no_such_key=1"])
    assert result.exit_code == 1
    assert "no_such_key" in _error_line(result)


def test_convert_dicom_needs_a_series(tmp_path: Path) -> None:
    result = runner.invoke(app, ["convert-dicom", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    result = runner.invoke(
        app, ["convert-dicom", "--pet", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "nothing" in _error_line(result)


def test_bench_needs_a_choice() -> None:
    result = runner.invoke(app, ["bench"])
    assert result.exit_code == 1


def test_convert_dicom_rtstruct_with_one_roi_needs_no_roi_name(shared_data: Path, tmp_path: Path) -> None:
    """Like ``convert_dicom``: ``--roi`` may be left out when the RTSTRUCT holds one ROI (STS_003)."""
    case = shared_data / "sts-petct" / "sts_images" / "STS_003" / "PET" / "dicom"
    arguments = ["convert-dicom", "--pet", str(case / "image"), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, [*arguments, "--rtstruct", str(case / "mask" / "RS.dcm")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "mask.nii.gz").is_file()
    result = runner.invoke(app, [*arguments, "--roi", "GTV"])
    assert result.exit_code == 1 and "--rtstruct" in _error_line(result)
