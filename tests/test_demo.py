"""The demo end to end on a tiny budget: cohort, training, prediction and evaluation land where it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from h2aseg.config import resolve_config
from h2aseg.data.layouts import read_dataset
from h2aseg.data.splits import Split
from h2aseg.inference.checkpoint import build_network
from h2aseg.phantom.cohort import write_cohort
from h2aseg.pipeline.demo import phantom_config_path, run_demo


def cases_of(cases: list) -> set[str]:
    return {case.case_id for case in cases}


@pytest.mark.slow
def test_demo_writes_every_output_it_announces(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    summary = run_demo(
        out,
        n_cases=5,
        seed=1,
        extra_overrides=["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.val_every=1"],
        test_cases=4,
    )
    assert (out / "data").is_dir()
    split = Split.load(out / "split.json")
    cases = read_dataset(out / "data", layout="autopet")
    first = cases_of(write_cohort(out / "again", n_cases=5, seed=1, layout="autopet", preset="small"))
    assert set(split.train + split.val) <= first  # training and validation come from the first 5 only
    patients = {case.case_id: case.patient_id for case in cases}
    in_split = {patients[c] for c in first}
    further = [c for c in split.test if c not in first]
    assert further and all(patients[c] not in in_split for c in further)  # whole new patients only
    assert len(split.train) + len(split.val) + len(split.test) == 5 + len(further) <= 9
    for name in ("best.ckpt", "last.ckpt"):
        checkpoint = torch.load(out / "checkpoints" / name, weights_only=True)
        assert checkpoint["hyper_parameters"]["config"]["model"]["name"] == "h2aseg"
    for case_id in split.test:
        for suffix in ("_seg.nii.gz", "_lesions.csv", "_summary.json", "_mip.png"):
            assert (out / "predictions" / f"{case_id}{suffix}").is_file()
    written = json.loads((out / "evaluation" / "summary.json").read_text())
    assert written == summary
    assert set(summary) >= {"dice", "hd95", "precision", "recall", "fpv_ml", "fnv_ml", "dice_agg"}
    assert (out / "evaluation" / "per_case.csv").read_text().count("\n") == len(split.test) + 1


def test_demo_patches_need_no_padding_inside_the_network() -> None:
    config = resolve_config(phantom_config_path())
    network = build_network(config)
    patch = config["preprocess"]["patch_size"]
    assert all(size % multiple == 0 for size, multiple in zip(patch, network.size_multiple, strict=True))
