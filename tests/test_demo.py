"""The demo end to end on a tiny budget: cohort, training, prediction and evaluation land where it says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from h2aseg.config import resolve_config
from h2aseg.data.splits import Split
from h2aseg.inference.checkpoint import build_network
from h2aseg.pipeline.demo import phantom_config_path, run_demo


@pytest.mark.slow
def test_demo_writes_every_output_it_announces(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    summary = run_demo(
        out,
        n_cases=5,
        seed=1,
        extra_overrides=["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.val_every=1"],
    )
    assert (out / "data").is_dir()
    split = Split.load(out / "split.json")
    assert len(split.train) + len(split.val) + len(split.test) == 5
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
