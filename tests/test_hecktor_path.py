"""The HECKTOR path end to end on a tiny phantom: labels 0/1/2, a 3-class softmax trained a few steps,
a labelled mask on the CT grid with a per-class lesion report, and the per-class evaluation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cc3d
import nibabel as nib
import numpy as np
import yaml

from h2aseg.config import resolve_config
from h2aseg.evaluation.evaluate import evaluate_folder
from h2aseg.inference.predictor import Predictor
from h2aseg.phantom.cohort import write_cohort
from h2aseg.phantom.sampling import PRESETS
from h2aseg.phantom.shapes import Grid
from h2aseg.training.train import train

TINY_HECKTOR = dataclasses.replace(
    PRESETS["hecktor"],
    ct_grid=Grid((56, 56, 50), (4.0, 4.0, 4.0), (-110.0, -110.0, -250.0)),
    pet_grid=Grid((20, 20, 16), (16.0, 16.0, 16.0), (-152.0, -152.0, -290.0)),
)


def test_three_classes_from_phantom_to_per_class_metrics(tmp_path: Path) -> None:
    cases = write_cohort(tmp_path / "data", n_cases=5, seed=11, layout="hecktor", preset=TINY_HECKTOR)
    for case in cases:  # a primary and 0-3 nodes on the CT grid
        label = np.asarray(nib.load(case.label).dataobj)
        assert set(np.unique(label).tolist()) <= {0, 1, 2} and (label == 1).any()
        assert cc3d.connected_components(label == 2, connectivity=26, return_N=True)[1] <= 3

    hecktor = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "hecktor.yaml").read_text())
    config = {
        **hecktor,
        "output_dir": str(tmp_path / "run"),
        "data": {**hecktor["data"], "root": str(tmp_path / "data"), "cache_dir": None, "num_workers": 0},
        "preprocess": {**hecktor["preprocess"], "target_spacing_mm": [8.0] * 3, "patch_size": [32, 32, 16]},
        "model": {**hecktor["model"], "channels": [2, 4, 8, 16, 32]},
        "trainer": {**hecktor["trainer"], "max_epochs": 1, "val_every": 1, "accelerator": "cpu", "devices": 1,
                    "precision": "32-true", "log_every_n_steps": 1},
        "inference": {**hecktor["inference"], "sw_batch_size": 4, "overlap": 0.25},
    }  # fmt: skip
    config_path = tmp_path / "hecktor_tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    resolved = resolve_config(config_path)
    assert resolved["data"]["target"] == "multiclass" and resolved["model"]["out_channels"] == 3

    best = train(config_path)
    metrics = (tmp_path / "run" / "logs").rglob("metrics.csv")
    header = next(metrics).read_text().splitlines()[0]
    assert "val/dice_GTVp" in header and "val/dice_GTVn" in header

    predictor = Predictor.from_checkpoint(best, device="cpu")
    assert predictor.out_channels == 3
    predictions, truths = tmp_path / "predictions", tmp_path / "truth"
    truths.mkdir()
    for case in cases[:2]:
        shutil.copyfile(case.label, truths / f"{case.case_id}.nii.gz")
        result = predictor.predict_case(case.ct, case.pet, predictions, case.case_id, grid="ct")
        mask, ct = nib.load(result.mask), nib.load(case.ct)
        assert mask.shape == ct.shape and np.allclose(mask.affine, ct.affine)
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1, 2}
        report = json.loads(result.summary_json.read_text())
        assert list(report["classes"]) == ["GTVp", "GTVn"]
        assert sum(block["lesion_count"] for block in report["classes"].values()) == report["lesion_count"]
        assert all(lesion["class_label"] in (1, 2) for lesion in report["lesions"])

    summary = evaluate_folder(predictions, truths, tmp_path / "evaluation", classes=resolved["classes"])
    assert list(summary["classes"]) == ["GTVp", "GTVn"] and summary["n_cases"] == 2
    assert summary["classes"]["GTVp"]["dice"]["n"] == 2
    header = (tmp_path / "evaluation" / "per_case.csv").read_text().splitlines()[0]
    assert "GTVp_dice" in header and "GTVn_fpv_ml" in header
