"""Training on a tiny synthetic cohort: checkpoints, resume, validation Dice, data module, DDP on gloo.

Run as a script (``python tests/test_training.py CONFIG OUT_DIR``) it is the worker of the DDP test:
it trains from ``CONFIG`` and writes a checksum of its final weights to ``OUT_DIR/rank{N}.txt``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from monai.data import Dataset
from monai.transforms import Compose, RandGaussianNoised
from torch import nn

from h2aseg.config import resolve_config
from h2aseg.data.splits import Split
from h2aseg.phantom.cohort import write_cohort
from h2aseg.phantom.sampling import PRESETS
from h2aseg.phantom.shapes import Grid
from h2aseg.training.datamodule import EpochIndexSampler, EpochSeededDataset, PETCTDataModule
from h2aseg.training.module import SegmentationModule
from h2aseg.training.train import AtomicCheckpointIO, run_training, train

TINY_MODEL = {"name": "h2aseg", "channels": [2, 4, 8, 16, 32]}
PATCH = [32, 32, 16]


def _tiny_preset() -> Any:
    """The ``small`` phantom (trunk) on an 8 mm grid of 36 × 32 × 32 voxels, every case with a lesion."""
    small = PRESETS["small"]
    grid = Grid((36, 32, 32), (8.0, 8.0, 8.0), (-140.0, -124.0, small.ct_grid.origin_mm[2]))
    return dataclasses.replace(small, name="tiny", ct_grid=grid, negative_fraction=0.0)


@pytest.fixture(scope="module", autouse=True)
def _single_thread() -> Any:
    """One intra-op thread: these tiny tensors gain nothing from more, and 2 shared cores stall on them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny phantom cases in the flat layout (split 6:2:2 → 4 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, n_cases=6, seed=3, layout="flat", preset=_tiny_preset())
    return root


def _config_file(folder: Path, root: Path, **sections: dict[str, Any]) -> Path:
    """A YAML config for a tiny CPU run on ``root`` (sections override the tiny defaults)."""
    content: dict[str, Any] = {
        "seed": 7,
        "output_dir": str(folder / "run"),
        "data": {"root": str(root), "layout": "flat"},
        "preprocess": {"patch_size": PATCH, "samples_per_volume": 2, "rotation_prob": 1.0, "zoom_prob": 0.0},
        "model": TINY_MODEL,
        "trainer": {
            "max_epochs": 1,
            "val_every": 1,
            "batch_size": 2,
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
        },
        "inference": {"sw_batch_size": 4, "overlap": 0.25},
    }
    for name, values in sections.items():
        content[name] = {**content.get(name, {}), **values}
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two epochs in one go, and one epoch then a resumed second one, from the same config (with an
    EMA of the weights, whose state must survive the resume too)."""
    folder = tmp_path_factory.mktemp("runs")
    config = _config_file(folder, cohort, trainer={"ema_decay": 0.9})
    straight = folder / "straight"
    split = folder / "interrupted"
    best = train(config, [f"output_dir={straight}", "trainer.max_epochs=2"])
    train(config, [f"output_dir={split}", "trainer.max_epochs=1"])
    train(config, [f"output_dir={split}", "trainer.max_epochs=2"], resume=True)
    return {"straight": straight, "interrupted": split, "best": best}


@pytest.mark.slow
def test_resume_repeats_an_uninterrupted_run(runs: dict[str, Path]) -> None:
    straight = torch.load(runs["straight"] / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(runs["interrupted"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 1
    assert straight["global_step"] == resumed["global_step"] == 4
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, weight in straight["state_dict"].items():
        assert torch.equal(weight, resumed["state_dict"][name]), name
        assert torch.equal(straight["current_model_state"][name], resumed["current_model_state"][name]), name
    assert not all(
        torch.equal(w, straight["current_model_state"][k]) for k, w in straight["state_dict"].items()
    )
    assert straight["lr_schedulers"][0]["_last_lr"] == pytest.approx([1e-4 * 0.99**2])


@pytest.mark.slow
def test_run_folder_and_checkpoint_contract(runs: dict[str, Path]) -> None:
    run = runs["straight"]
    assert runs["best"] == run / "checkpoints" / "best.ckpt"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    saved_config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(run / "checkpoints" / name, weights_only=True)
        assert checkpoint["hyper_parameters"]["config"] == saved_config
        assert checkpoint["state_dict"] and all(k.startswith("model.") for k in checkpoint["state_dict"])
    assert saved_config["model"] == TINY_MODEL and saved_config["trainer"]["max_epochs"] == 2
    split = Split.load(run / "split.json")
    assert len(split.train) == 4 and len(split.val) == 1
    rows = list(csv.DictReader((run / "logs" / "csv" / "version_0" / "metrics.csv").open()))
    dice = [float(row["val/dice"]) for row in rows if row.get("val/dice")]
    assert len(dice) == 2 and all(0.0 <= d <= 1.0 for d in dice)
    assert any(row.get("train/loss_epoch") for row in rows)
    assert list((run / "logs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))
    best = torch.load(runs["best"], weights_only=True)
    best_states = [s for k, s in best["callbacks"].items() if "val/dice" in k]
    assert float(best_states[0]["best_model_score"]) == pytest.approx(max(dice))


def _module(config_path: Path, *overrides: str) -> SegmentationModule:
    return SegmentationModule(resolve_config(config_path, list(overrides)))


def test_loss_and_optimiser_follow_the_model_and_config(cohort: Path, tmp_path: Path) -> None:
    config = _config_file(tmp_path, cohort)
    module = _module(config)
    assert module.deep_supervision and module.loss.weights == [5.0, 4.0, 3.0, 2.0, 1.0]
    image = torch.rand(2, 2, *PATCH)
    label = (torch.rand(2, 1, *PATCH) > 0.8).to(torch.uint8)
    loss = module.training_step({"image": image, "label": label}, 0)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    optimisers = module.configure_optimizers()
    adam, scheduler = optimisers["optimizer"], optimisers["lr_scheduler"]
    assert isinstance(adam, torch.optim.Adam)
    assert adam.defaults["lr"] == pytest.approx(1e-4) and adam.defaults["weight_decay"] == pytest.approx(1e-5)
    assert scheduler["interval"] == "epoch" and scheduler["scheduler"].gamma == pytest.approx(0.99)
    baseline = _module(config, "model.name=unet3d", "model.features=[2, 2, 4, 4, 8, 2]")
    assert not baseline.deep_supervision and baseline.loss.weights is None


def test_bad_model_section_raises(cohort: Path, tmp_path: Path) -> None:
    config = _config_file(tmp_path, cohort)
    with pytest.raises(ValueError, match="bad argument"):
        _module(config, "model.name=unet3d", "model.no_such_argument=1")
    with pytest.raises(ValueError, match=r"set model\.out_channels=2"):
        _module(config, "model.name=unet3d", "model.out_channels=3")


class _PetThreshold(nn.Module):
    """Stand-in network: lesion wherever the PET channel is above 0.5 (two softmax logits)."""

    out_channels = 2
    output_activation = "softmax"

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        lesion = (image[:, 1:2] > 0.5).float()
        return torch.cat([1 - lesion, lesion], dim=1)


def test_validation_dice_is_the_sliding_window_dice(cohort: Path, tmp_path: Path) -> None:
    module = _module(_config_file(tmp_path, cohort))
    module.model = _PetThreshold()
    truth = torch.zeros(1, 1, 40, 36, 20)
    truth[..., 5:25, 5:25, 2:12] = 1
    predicted = torch.zeros_like(truth)
    predicted[..., 10:30, 5:25, 2:12] = 1
    module.validation_step({"image": torch.cat([torch.zeros_like(truth), predicted], 1), "label": truth}, 0)
    overlap = 15 * 20 * 10
    expected = 2 * overlap / (2 * 20 * 20 * 10)
    module.validation_step({"image": torch.zeros(1, 2, 40, 36, 20), "label": torch.zeros_like(truth)}, 1)
    assert module.dice_metric.aggregate().item() == pytest.approx(expected)


def test_epoch_seeded_samples_and_sharded_order() -> None:
    items = [{"image": torch.zeros(1, 4, 4, 4)} for _ in range(5)]
    noisy = Dataset(items, Compose([RandGaussianNoised(keys=["image"], prob=1.0)]))
    dataset = EpochSeededDataset(noisy, seed=11)
    first = dataset[(0, 2)]["image"]
    assert torch.equal(dataset[(1, 3)]["image"], dataset[(1, 3)]["image"])
    assert torch.equal(dataset[(0, 2)]["image"], first)
    assert not torch.equal(dataset[(1, 2)]["image"], first)
    samplers = [EpochIndexSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=11) for r in (0, 1)]
    orders = []
    for epoch in (0, 1):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        keys = [key for sampler in samplers for key in sampler]
        assert {epoch} == {e for e, _ in keys} and {i for _, i in keys} == set(range(5))
        orders.append([i for _, i in keys])
    assert orders[0] != orders[1]


def test_data_module_batches_and_split(cohort: Path, tmp_path: Path) -> None:
    config = resolve_config(_config_file(tmp_path, cohort), ["trainer.batch_size=2"])
    data = PETCTDataModule(config)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 2, *PATCH) and batch["label"].shape == (4, 1, *PATCH)
    assert set(torch.unique(batch["label"]).tolist()) <= {0, 1}
    volume = next(iter(data.val_dataloader()))
    assert volume["image"].shape[:2] == (1, 2) and volume["label"].shape[:2] == (1, 1)
    saved = Split.load(Path(config["output_dir"]) / "split.json")
    assert saved.train == data.split.train and saved.val == data.split.val


def test_memory_cache_gives_the_same_patches_as_reading_files(cohort: Path, tmp_path: Path) -> None:
    plain, cached = (
        PETCTDataModule(resolve_config(_config_file(tmp_path, cohort), [f"data.cache_in_memory={flag}"]))
        for flag in ("false", "true")
    )
    plain.setup("fit")
    cached.setup("fit")
    assert type(cached.train_dataset.dataset).__name__ == "CacheDataset"
    for key in ((0, 0), (3, 1), (0, 0)):  # same (epoch, index), same patches; the cache is not mutated
        for expected, got in zip(plain.train_dataset[key], cached.train_dataset[key], strict=True):
            assert torch.equal(expected["image"], got["image"]) and torch.equal(
                expected["label"], got["label"]
            )
    assert torch.equal(plain.val_dataset[0]["image"], cached.val_dataset[0]["image"])


def test_poly_schedule_follows_its_closed_form(cohort: Path, tmp_path: Path) -> None:
    config = _config_file(tmp_path, cohort)
    module = _module(config, "optim.schedule=poly", "optim.lr=0.002", "trainer.max_epochs=10")
    optimisers = module.configure_optimizers()
    adam, scheduler = optimisers["optimizer"], optimisers["lr_scheduler"]["scheduler"]
    for epoch in range(1, 11):
        adam.step()
        scheduler.step()
        assert adam.param_groups[0]["lr"] == pytest.approx(0.002 * (1 - epoch / 10) ** 0.9, abs=1e-12)
    with pytest.raises(ValueError, match=r"optim\.schedule must be one of exponential, poly"):
        resolve_config(config, ["optim.schedule=cosine"])


class _WeightRecorder(Callback):
    """Records a copy of the network's weights after every optimiser step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        self.steps.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_ema_checkpoint_holds_the_moving_average(cohort: Path, tmp_path: Path) -> None:
    decay = 0.8
    config = resolve_config(_config_file(tmp_path, cohort), [f"trainer.ema_decay={decay}"])
    recorder = _WeightRecorder()
    trainer = run_training(config, callbacks=[recorder])
    assert len(recorder.steps) == 2
    expected = {  # the first update copies the weights, then average = decay·average + (1 − decay)·weights
        name: decay * first + (1 - decay) * recorder.steps[1][name] if first.is_floating_point() else first
        for name, first in recorder.steps[0].items()
    }
    checkpoint = torch.load(Path(config["output_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"].keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, rtol=0, atol=1e-6)
        assert torch.equal(checkpoint["current_model_state"][name], recorder.steps[1][name])
    final = trainer.lightning_module.state_dict()  # after fit the module holds the average
    assert all(torch.allclose(final[name], value, atol=1e-6) for name, value in expected.items())
    with pytest.raises(ValueError, match=r"trainer\.ema_decay must be null or in"):
        resolve_config(_config_file(tmp_path, cohort), ["trainer.ema_decay=1.5"])


def test_time_budget_stops_after_a_validated_step(cohort: Path, tmp_path: Path) -> None:
    config = _config_file(
        tmp_path, cohort, trainer={"max_epochs": 3, "val_every": 5, "max_time_minutes": 1e-6}
    )
    best = train(config)
    checkpoint = torch.load(best, weights_only=True)
    assert best.name == "best.ckpt" and checkpoint["global_step"] == 1
    last = torch.load(best.parent / "last.ckpt", weights_only=True)
    assert all(torch.equal(w, last["state_dict"][name]) for name, w in checkpoint["state_dict"].items())


def test_resume_without_checkpoint_raises(cohort: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        run_training(resolve_config(_config_file(tmp_path, cohort)), resume=True)


def test_atomic_checkpoint_io_leaves_no_partial_file(tmp_path: Path) -> None:
    writer = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    writer.save_checkpoint({"weights": torch.ones(3)}, target)
    with pytest.raises(Exception, match="pickle"):
        writer.save_checkpoint({"weights": torch.zeros(3), "bad": lambda: None}, target)
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    assert torch.equal(torch.load(target, weights_only=True)["weights"], torch.ones(3))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_ranks_identical(cohort: Path, tmp_path: Path) -> None:
    config = _config_file(
        tmp_path,
        cohort,
        trainer={"strategy": "ddp", "devices": 2, "batch_size": 1, "max_epochs": 1},
        preprocess={"samples_per_volume": 1},
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    result = subprocess.run(
        [*command, __file__, str(config), str(tmp_path / "out")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [(tmp_path / "out" / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert reports[0] == reports[1]
    checksum, steps, world_size = reports[0]
    assert int(steps) == 2 and int(world_size) == 2
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert _checksum(last["state_dict"]) == checksum


def _checksum(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _ddp_worker(config_path: str, out_dir: str) -> None:
    """Train from ``config_path`` (launched by torchrun) and write this rank's weight checksum."""
    trainer = run_training(resolve_config(config_path))
    state = {f"model.{k}": v for k, v in trainer.lightning_module.model.state_dict().items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = f"{_checksum(state)} {trainer.global_step} {trainer.world_size}"
    (out / f"rank{trainer.global_rank}.txt").write_text(report, encoding="utf-8")


if __name__ == "__main__":
    _ddp_worker(*sys.argv[1:3])


def test_lesion_free_cases_train_without_a_warning_per_patch(tmp_path: Path) -> None:
    root = tmp_path / "negatives"
    lesion_free = dataclasses.replace(_tiny_preset(), negative_fraction=1.0)
    write_cohort(root, n_cases=5, seed=4, layout="flat", preset=lesion_free)
    config = resolve_config(_config_file(tmp_path, root, trainer={"val_every": 2}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters_before = list(warnings.filters)
        run_training(config)
        assert warnings.filters == filters_before  # silenced during training only
    assert not [w for w in caught if "Num foregrounds 0" in str(w.message)]
