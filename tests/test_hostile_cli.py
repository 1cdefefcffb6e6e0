"""The command line against a hostile user: each bad input is refused with exit code 1, one line that
names the culprit, and an output folder left as it was; killed and failing runs finish on a rerun."""

from __future__ import annotations

import dataclasses
import gzip
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from h2aseg.cli import app
from h2aseg.config import resolve_config, to_plain
from h2aseg.inference.predictor import Predictor
from h2aseg.io import remove_stale_temporaries
from h2aseg.models import build_model
from h2aseg.phantom.cohort import write_cohort
from h2aseg.phantom.sampling import PRESETS
from h2aseg.phantom.shapes import Grid
from h2aseg.training.preflight import StopOnNonFiniteLoss

runner = CliRunner()
STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sts-petct" / "sts_images"
TINY_UNET = {"name": "unet3d", "features": [2, 2, 4, 4, 8, 2]}
TINY_H2ASEG = {"name": "h2aseg", "channels": [2, 4, 8, 16, 32]}
PATCH = [32, 32, 16]
N_CASES = 4
Setup = Callable[[Path, Path, Path], tuple[list[str], str, Path]]


def _tiny_preset() -> Any:
    """The ``small`` phantom on an 8 mm grid of 36 x 32 x 32 voxels, every case with a lesion."""
    small = PRESETS["small"]
    grid = Grid((36, 32, 32), (8.0, 8.0, 8.0), (-140.0, -124.0, small.ct_grid.origin_mm[2]))
    return dataclasses.replace(small, name="tiny", ct_grid=grid, negative_fraction=0.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny phantom cases in the flat layout."""
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, n_cases=N_CASES, seed=3, layout="flat", preset=_tiny_preset())
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net checkpoint (random weights) in the format ``train`` writes."""
    torch.manual_seed(0)
    model = build_model(TINY_UNET["name"], **{k: v for k, v in TINY_UNET.items() if k != "name"})
    config = {
        "model": dict(TINY_UNET),
        "preprocess": {"patch_size": PATCH},
        "inference": {"sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian", "tta_flips": False},
    }
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state, "epoch": 0}, path)
    return path


def _snapshot(path: Path) -> dict[str, tuple[int, int]] | None:
    """Relative path -> (size, mtime_ns) of everything under ``path`` (``None`` when absent)."""
    if not path.exists():
        return None
    if path.is_file():
        return {"": (path.stat().st_size, path.stat().st_mtime_ns)}
    return {
        str(item.relative_to(path)): (item.stat().st_size, item.stat().st_mtime_ns)
        for item in sorted(path.rglob("*"))
    }


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def _copy_case(cohort: Path, folder: Path, index: int = 0) -> tuple[Path, Path, Path]:
    """CT, PET and mask of cohort case ``index`` copied into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for role in ("ct", "pet", "seg"):
        source = cohort / f"phantom_{index:03d}_{role}.nii.gz"
        copies.append(Path(shutil.copy(source, folder / source.name)))
    return copies[0], copies[1], copies[2]


def _rewrite(path: Path, change: Callable[[np.ndarray], np.ndarray], dtype: Any = np.float32) -> None:
    image = nib.load(path)
    array = change(np.asarray(image.dataobj, dtype=np.float64)).astype(dtype)
    nib.save(nib.Nifti1Image(array, image.affine), path)


def _truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _with_nan(array: np.ndarray) -> np.ndarray:
    array[2, 3, 4] = np.nan
    return array


def _predict_pair(change_ct: Callable | None = None, change_pet: Callable | None = None) -> Setup:
    def setup(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
        ct, pet, _ = _copy_case(cohort, tmp / "in")
        if change_ct is not None:
            change_ct(ct)
        if change_pet is not None:
            change_pet(pet)
        culprit = (ct if change_ct is not None else pet).name
        out = tmp / "out"
        args = ["predict", "--model", str(checkpoint), "--ct", str(ct), "--pet", str(pet), "--out", str(out)]
        return [*args, "--device", "cpu"], culprit, out

    return setup


def _partial_ct(path: Path) -> None:
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 10:13], image.affine), path)


def _random_checkpoint(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    ct, pet, _ = _copy_case(cohort, tmp / "in")
    random = tmp / "random.ckpt"
    random.write_bytes(np.random.default_rng(0).bytes(4096))
    out = tmp / "out"
    return (
        ["predict", "--model", str(random), "--ct", str(ct), "--pet", str(pet), "--out", str(out)],
        "random.ckpt",
        out,
    )


def _output_is_a_file(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    ct, pet, _ = _copy_case(cohort, tmp / "in")
    out = tmp / "results"
    out.write_text("not a folder")
    return (
        ["predict", "--model", str(checkpoint), "--ct", str(ct), "--pet", str(pet), "--out", str(out)],
        "results",
        out,
    )


def _cuda_without_cuda(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, _, out = _predict_pair()(tmp, cohort, checkpoint)
    return [*args[:-2], "--device", "cuda"], "cuda", out


def _dicom_other_patient(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    out = tmp / "out"
    ct_dicom, pet_dicom = (
        STS / "STS_001" / "CT" / "dicom" / "image",
        STS / "STS_002" / "PET" / "dicom" / "image",
    )
    args = ["predict", "--model", str(checkpoint), "--ct-dicom", str(ct_dicom), "--pet-dicom", str(pet_dicom)]
    return [*args, "--out", str(out), "--device", "cpu"], "PatientID", out


def _dicom_truncated_slice(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    series = Path(shutil.copytree(STS / "STS_002" / "CT" / "dicom" / "image", tmp / "ct"))
    broken = sorted(series.iterdir())[5]
    _truncate(broken)
    out = tmp / "out"
    return ["convert-dicom", "--ct", str(series), "--out", str(out)], broken.name, out


def _training(
    change: Callable[[Path], str] | None = None, overrides: tuple[str, ...] = (), culprit: str = ""
) -> Setup:
    """A tiny training on a copy of the cohort; ``change(dataset)`` damages it and names the file."""

    def setup(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
        dataset = Path(shutil.copytree(cohort, tmp / "data"))
        named = change(dataset) if change is not None else culprit
        config = tmp / "run.yaml"
        content = {
            "output_dir": str(tmp / "run"),
            "data": {"root": str(dataset), "layout": "flat", "split_ratios": [2, 1, 1]},
            "preprocess": {"patch_size": PATCH, "samples_per_volume": 1},
            "model": TINY_H2ASEG,
            "trainer": {"max_epochs": 1, "val_every": 1, "batch_size": 1, "accelerator": "cpu", "devices": 1},
        }
        config.write_text(yaml.safe_dump(content))
        return ["train", "--config", str(config), *overrides], named, tmp / "run"

    return setup


def _damage(role: str, change: Callable[[np.ndarray], np.ndarray], dtype: Any = np.float32) -> Callable:
    def damage(dataset: Path) -> str:
        path = dataset / f"phantom_001_{role}.nii.gz"
        _rewrite(path, change, dtype)
        return path.name

    return damage


def _label_value(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(label: np.ndarray) -> np.ndarray:
        label[label > 0] = value
        return label

    return change


def _existing_run(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    args, _, run = _training()(tmp, cohort, checkpoint)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"an earlier run's weights")
    return args, "--resume", run


def _resume_with_another_network(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    args, _, run = _training()(tmp, cohort, checkpoint)
    saved = to_plain(resolve_config(Path(args[2]), ["model.channels=[4, 8, 16, 32, 64]"]))
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"hyper_parameters": {"config": saved}}, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    return [*args, "--resume"], "model.channels", run


def _phantom_other_seed(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    out = tmp / "cohort"
    write_cohort(out, n_cases=1, seed=0, layout="flat", preset=_tiny_preset())
    return ["phantom", "--out", str(out), "--cases", "1", "--seed", "1", "--layout", "flat"], "seed", out


def _gpu_without_gpu(tmp: Path, cohort: Path, checkpoint: Path) -> tuple[list[str], str, Path]:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return _training(overrides=("trainer.accelerator=gpu",), culprit="trainer.accelerator=gpu")(
        tmp, cohort, checkpoint
    )


HOSTILE: dict[str, Setup] = {
    "predict-nan-pet": _predict_pair(change_pet=lambda p: _rewrite(p, _with_nan)),
    "predict-pet-in-bq-per-ml": _predict_pair(change_pet=lambda p: _rewrite(p, lambda a: a * 1000 + 5000)),
    "predict-ct-not-in-hu": _predict_pair(change_ct=lambda p: _rewrite(p, lambda a: a + 1024)),
    "predict-ct-covers-a-sliver": _predict_pair(change_ct=_partial_ct),
    "predict-truncated-pet": _predict_pair(change_pet=_truncate),
    "predict-random-bytes-checkpoint": _random_checkpoint,
    "predict-output-is-a-file": _output_is_a_file,
    "predict-cuda-without-cuda": _cuda_without_cuda,
    "predict-dicom-of-two-patients": _dicom_other_patient,
    "convert-dicom-truncated-slice": _dicom_truncated_slice,
    "train-nan-ct": _training(_damage("ct", _with_nan)),
    "train-label-2-for-binary": _training(_damage("seg", _label_value(2), np.uint8)),
    "train-label-one-half": _training(_damage("seg", _label_value(0.5))),
    "train-truncated-pet": _training(
        lambda d: (_truncate(d / "phantom_002_pet.nii.gz"), "phantom_002_pet")[1]
    ),
    "train-model-channels-abc": _training(overrides=("model.channels=abc",), culprit="model.channels=abc"),
    "train-gpu-without-gpu": _gpu_without_gpu,
    "train-split-file-missing": _training(overrides=("data.split_file=none.json",), culprit="none.json"),
    "train-into-an-existing-run": _existing_run,
    "train-resume-with-another-network": _resume_with_another_network,
    "phantom-into-a-cohort-of-another-seed": _phantom_other_seed,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_is_one_line_and_changes_nothing(
    name: str, tmp_path: Path, cohort: Path, checkpoint: Path
) -> None:
    args, culprit, watched = HOSTILE[name](tmp_path, cohort, checkpoint)
    before = _snapshot(watched)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    errors = _error_lines(result.output)
    assert len(errors) == 1, result.output
    assert culprit in errors[0], errors[0]
    assert "Traceback" not in result.output
    assert "weights_only=False" not in result.output
    assert _snapshot(watched) == before


def test_debug_shows_the_traceback(tmp_path: Path, cohort: Path, checkpoint: Path) -> None:
    args, _, _ = _random_checkpoint(tmp_path, cohort, checkpoint)
    result = runner.invoke(app, ["--debug", *args])
    assert result.exit_code != 0
    assert isinstance(result.exception, ValueError)


def test_non_suv_pet_is_accepted_with_the_flag(tmp_path: Path, cohort: Path, checkpoint: Path) -> None:
    args, _, out = _predict_pair(change_pet=lambda p: _rewrite(p, lambda a: a * 1000 + 5000))(
        tmp_path, cohort, checkpoint
    )
    result = runner.invoke(app, [*args, "--allow-non-suv"])
    assert result.exit_code == 0, result.output
    assert (out / "phantom_000_seg.nii.gz").is_file()


def test_predict_case_refuses_an_id_that_leaves_the_output_folder(
    cohort: Path, checkpoint: Path, tmp_path: Path
) -> None:
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    for case_id in ("../x", "a/b", "..", ""):
        with pytest.raises(ValueError, match="plain file name"):
            predictor.predict_case(
                cohort / "phantom_000_ct.nii.gz", cohort / "phantom_000_pet.nii.gz", tmp_path / "out", case_id
            )
    assert not (tmp_path / "x_seg.nii.gz").exists()
    assert not (tmp_path / "out").exists()


def test_non_finite_loss_stops_training(tmp_path: Path, cohort: Path, checkpoint: Path) -> None:
    args, _, run = _training(overrides=("optim.lr=1e30", "trainer.max_epochs=3"))(
        tmp_path, cohort, checkpoint
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    (error,) = _error_lines(result.output)
    assert "training loss is nan" in error or "training loss is inf" in error, error
    assert "best checkpoint" not in result.output
    assert not run.exists()


def test_the_loss_guard_raises_on_nan_only() -> None:
    trainer = type("T", (), {"current_epoch": 2, "global_step": 7})()
    guard = StopOnNonFiniteLoss()
    guard.on_before_backward(trainer, None, torch.tensor(0.5))
    with pytest.raises(ValueError, match="loss is nan at epoch 2, step 7"):
        guard.on_before_backward(trainer, None, torch.tensor(float("nan")))


def test_predict_dataset_goes_on_past_a_bad_case(tmp_path: Path, cohort: Path, checkpoint: Path) -> None:
    dataset = Path(shutil.copytree(cohort, tmp_path / "data"))
    _rewrite(dataset / "phantom_002_pet.nii.gz", _with_nan)
    out = tmp_path / "out"
    args = [
        "predict",
        "--model",
        str(checkpoint),
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "phantom_002" in result.output and "NaN" in result.output
    (error,) = _error_lines(result.output)
    assert "1 of 4 case(s) failed" in error
    for index in (0, 1, 3):
        assert (out / f"phantom_{index:03d}_summary.json").is_file()
    assert not list(out.glob("phantom_002_*"))
    done = _snapshot(out)
    result = runner.invoke(app, args)  # a rerun skips the three complete cases
    assert result.exit_code == 1
    assert _snapshot(out) == done


def _complete_cases(out: Path) -> list[str]:
    suffixes = ("seg.nii.gz", "lesions.csv", "summary.json", "mip.png")
    cases = sorted({path.name.split("_seg")[0] for path in out.glob("*_seg.nii.gz")})
    return [case for case in cases if all((out / f"{case}_{suffix}").is_file() for suffix in suffixes)]


def test_kill_9_of_a_dataset_prediction_then_rerun(tmp_path: Path, cohort: Path, checkpoint: Path) -> None:
    dataset = cohort
    out = tmp_path / "out"
    args = [
        "predict",
        "--model",
        str(checkpoint),
        "--dataset",
        str(dataset),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    # A forked child inherits the imports (a fresh interpreter would spend most of the test importing).
    process = multiprocessing.get_context("fork").Process(target=app, kwargs={"args": args})
    process.start()
    deadline = time.monotonic() + 120
    while len(_complete_cases(out) if out.is_dir() else []) < 2:
        assert process.is_alive(), "the prediction ended before two cases were written"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    first = _complete_cases(out)[:2]
    assert len(_complete_cases(out)) < N_CASES, "the run finished before the kill"
    stamps = {path.name: path.stat().st_mtime_ns for case in first for path in out.glob(f"{case}_*")}
    (out / f".tmp-{process.pid}-deadbeef-phantom_003_seg.nii.gz").write_bytes(
        b""
    )  # as a kill mid-write leaves
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(_complete_cases(out)) == N_CASES
    assert not [path for path in out.iterdir() if path.name.startswith(".") or ".tmp" in path.name]
    assert {name: (out / name).stat().st_mtime_ns for name in stamps} == stamps


def test_evaluate_table_is_not_wrapped_when_piped(tmp_path: Path, cohort: Path) -> None:
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for index in range(N_CASES):
        shutil.copy(
            cohort / f"phantom_{index:03d}_seg.nii.gz", predictions / f"phantom_{index:03d}_seg.nii.gz"
        )
    result = runner.invoke(app, ["evaluate", "--pred", str(predictions), "--gt", str(cohort)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("|")]
    assert len(rows) == 3
    assert all(row.endswith("|") for row in rows)
    assert rows[2].startswith("| prediction | lesion (1) | 100.00")


def test_gzip_is_really_truncated(tmp_path: Path, cohort: Path) -> None:
    """The truncated files of the suite are damaged data, not unreadable headers."""
    path = Path(shutil.copy(cohort / "phantom_000_pet.nii.gz", tmp_path / "pet.nii.gz"))
    _truncate(path)
    with pytest.raises(EOFError), gzip.open(path) as stream:
        stream.read()
    assert nib.load(path).shape == nib.load(cohort / "phantom_000_pet.nii.gz").shape


def test_overwrite_replaces_a_run_and_keeps_other_files(
    tmp_path: Path, cohort: Path, checkpoint: Path
) -> None:
    args, _, run = _existing_run(tmp_path, cohort, checkpoint)
    (run / "notes.txt").write_text("mine")
    result = runner.invoke(app, [*args, "--overwrite", "trainer.limit_train_batches=1"])
    assert result.exit_code == 0, result.output
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["hyper_parameters"]["config"]["output_dir"] == str(run)
    assert (run / "notes.txt").read_text() == "mine"
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_stale_checkpoint_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess_pid_that_ended()
    stale = tmp_path / f".tmp-{dead}-0123abcd-last.ckpt"
    live = tmp_path / f".tmp-{os.getpid()}-4567ef01-last.ckpt"
    for path in (stale, live):
        path.write_bytes(b"")
    remove_stale_temporaries(tmp_path)
    assert not stale.exists()
    assert live.exists()


def subprocess_pid_that_ended() -> int:
    process = multiprocessing.get_context("fork").Process(target=int)
    process.start()
    process.join()
    return process.pid


def test_predict_case_names_a_file_monai_cannot_read(tmp_path: Path, cohort: Path, checkpoint: Path) -> None:
    ct, pet, _ = _copy_case(cohort, tmp_path / "in")
    _truncate(pet)
    predictor = Predictor.from_checkpoint(checkpoint, "cpu")
    with pytest.raises(ValueError, match=r"phantom_000_pet\.nii\.gz: cannot be read .*EOFError"):
        predictor.predict_case(ct, pet, tmp_path / "out", "phantom_000")
    assert not (tmp_path / "out").exists()
