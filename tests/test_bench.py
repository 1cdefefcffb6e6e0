"""Smoke tests of the benchmarks at tiny sizes (figures are never asserted: only that they exist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from h2aseg.bench.quality import (
    ABLATION_ROWS,
    PAPER_ROWS,
    PET_ONLY_ROW,
    REDUCED_BASELINES,
    RUNS_FOLDER,
    THRESHOLD_ROW,
    QualityPlan,
    _model_overrides,
    available_rows,
    default_plan,
    row_settings,
    run_key,
    run_quality_benchmark,
)
from h2aseg.bench.speed import run_speed_benchmark
from h2aseg.config import resolve_config
from h2aseg.inference.checkpoint import build_network
from h2aseg.pipeline.demo import phantom_config_path


@pytest.mark.slow
def test_speed_benchmark_quick(tmp_path: Path) -> None:
    results = run_speed_benchmark(
        tmp_path, quick=True, models=["h2aseg", "unet3d"], repeats=1, volume_models=["h2aseg"], threads=1
    )
    assert [r.error for r in results] == [None, None, None]
    train = {r.model: r for r in results if r.task == "train"}
    assert train["h2aseg"].parameters > 0
    assert train["h2aseg"].gflops_forward > 0
    assert all(r.seconds_median > 0 and r.peak_memory_gb > 0 for r in results)
    written = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    assert len(written["results"]) == 3
    assert "| h2aseg | train |" in (tmp_path / "speed_cpu_quick.md").read_text()


@pytest.mark.slow
def test_quality_benchmark_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = QualityPlan(models=["h2aseg"], seeds=[0], epochs=1, n_cases=5, split_ratios=(6, 2, 2))
    plan.min_test_lesion_cases = 0
    records = run_quality_benchmark(tmp_path / "results", quick=True, plan=plan, work_dir=tmp_path / "work")
    assert set(records) == {THRESHOLD_ROW, "h2aseg"}
    table = (tmp_path / "results" / "quality_quick.md").read_text()
    assert "| h2aseg |" in table and "SUV ≥ 2.5" in table
    threshold = records[THRESHOLD_ROW][0]
    assert 0.0 <= threshold["summary"]["precision"]["mean"] <= 1.0
    run = records["h2aseg"][0]
    assert run["steps"] == run["planned_steps"] > 0 and run["parameters"] > 0
    assert set(run["per_case_dice"]) == set(threshold["per_case_dice"])
    written = json.loads((tmp_path / "results" / "quality_quick.json").read_text())
    assert written["runs"]["h2aseg"][0]["per_case_dice"] == run["per_case_dice"]

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("an evaluated run was trained again")

    monkeypatch.setattr("h2aseg.training.train.train", no_training)
    again = run_quality_benchmark(tmp_path / "results", quick=True, plan=plan, work_dir=tmp_path / "work")
    assert again["h2aseg"] == records["h2aseg"]
    # Another machine: a fresh work folder, only the committed results folder; nothing is retrained.
    [committed] = (tmp_path / "results" / RUNS_FOLDER / "h2aseg").glob("seed0_1ep_*.json")
    assert json.loads(committed.read_text()) == run
    results, other = tmp_path / "results", tmp_path / "other"
    elsewhere = run_quality_benchmark(results, quick=True, plan=plan, work_dir=other)
    assert elsewhere["h2aseg"] == records["h2aseg"]
    plan.seeds = [0, 1]
    tabulated = run_quality_benchmark(
        tmp_path / "results", quick=True, plan=plan, work_dir=tmp_path / "work", tables_only=True
    )
    assert tabulated["h2aseg"] == records["h2aseg"]  # seed 1 not trained, not tabulated


def test_every_row_gets_the_same_recipe() -> None:
    """Over every trainable row of the registry, the resolved configs differ only in ``model`` (name
    and widths): same data, split, patch, sampling, augmentation, loss, optimiser, schedule, epochs,
    EMA and seed; and the overrides that differ all start with ``model.``."""
    config_path = phantom_config_path()
    plan = default_plan(quick=False)
    assert plan.models == available_rows()
    assert set(PAPER_ROWS + ABLATION_ROWS + [PET_ONLY_ROW]) <= set(plan.models)
    recipes, settings = {}, {}
    for name in plan.models:
        settings[name] = row_settings(name, 1, plan, config_path)
        config = resolve_config(config_path, settings[name])
        assert config["model"]["name"] == name
        recipes[name] = {key: value for key, value in config.items() if key != "model"}
    reference = recipes["h2aseg"]
    assert reference["trainer"]["max_epochs"] == plan.epochs and reference["seed"] == 1
    assert reference["optim"]["lr"] == plan.learning_rate
    for name, recipe in recipes.items():
        assert recipe == reference, name
        shared = [item for item in settings[name] if not item.startswith("model.")]
        assert shared == [item for item in settings["h2aseg"] if not item.startswith("model.")], name


def test_run_key_ignores_paths_and_follows_settings() -> None:
    config_path = phantom_config_path()
    here = resolve_config(config_path, ["data.root=/a", "output_dir=/runs/a", "data.split_file=/a/s.json"])
    there = resolve_config(config_path, ["data.root=/b", "output_dir=/runs/b", "data.split_file=/b/s.json"])
    faster = resolve_config(config_path, ["data.root=/a", "optim.lr=0.01"])
    assert run_key(here, "c0") == run_key(there, "c0")
    assert run_key(here, "c0") != run_key(here, "c1")
    assert run_key(here, "c0") != run_key(faster, "c0")


@pytest.mark.slow
def test_quality_rows_build_at_the_phantom_patch_with_their_overrides() -> None:
    config_path = phantom_config_path()
    patch = resolve_config(config_path)["preprocess"]["patch_size"]
    for name in available_rows():
        config = resolve_config(config_path, _model_overrides(name, config_path))
        network = build_network(config).eval()
        with torch.no_grad():
            logits = network(torch.zeros(1, 2, *patch))
        assert logits.shape == (1, 2, *patch), name
        if name in REDUCED_BASELINES:
            assert {k: config["model"][k] for k in REDUCED_BASELINES[name]} == REDUCED_BASELINES[name]
            assert 1.0e6 < sum(p.numel() for p in network.parameters()) < (5.0e7 if name == "vnet" else 5.0e6)
    h2aseg_model = resolve_config(config_path, _model_overrides("h2aseg", config_path))["model"]
    assert h2aseg_model == resolve_config(config_path)["model"]
