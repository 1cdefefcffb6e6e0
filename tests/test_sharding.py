"""Sharded prediction: ranks from the launcher's environment, disjoint shares, one cohort summary."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from h2aseg.models import build_model
from h2aseg.pipeline.sharding import COHORT_SUMMARY, Rank

TINY_UNET = {"name": "unet3d", "features": [2, 2, 4, 4, 8, 2]}
RANK_SCRIPT = """
import json, sys
from h2aseg.pipeline.predict import predict
results = predict(sys.argv[1], sys.argv[2], dataset=sys.argv[3], device="cpu")
print(json.dumps([result.case_id for result in results]))
"""


def test_rank_from_environment_and_disjoint_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Rank.from_env() == Rank(0, 1, 0)
    items = list(range(7))
    shares = [Rank(r, 3, r).share(items) for r in range(3)]
    assert sorted(item for share in shares for item in share) == items and shares[0] == [0, 3, 6]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2"):
        Rank.from_env()
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ValueError, match="RANK='one'"):
        Rank.from_env()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # two fresh interpreters importing torch and MONAI: ~5 s of CPU each
def test_two_gloo_processes_split_a_dataset_and_rank_zero_summarises(tmp_path: Path) -> None:
    ids = ["case_a", "case_b", "case_c"]
    data = tmp_path / "data"
    data.mkdir()
    for index, case_id in enumerate(ids):  # 12 x 14 x 10 voxels: a body with a lesion of SUV 8
        pet_suv = np.zeros((12, 14, 10), np.float32)
        pet_suv[1:-1, 1:-1, 1:-1] = 1.0
        pet_suv[4 + index : 7 + index, 5:8, 3:6] = 8.0
        ct_hu = np.where(pet_suv > 0, 20.0, -1000.0).astype(np.float32)
        nib.save(nib.Nifti1Image(pet_suv, np.diag([4.0, 4.0, 3.0, 1.0])), data / f"{case_id}_pet.nii.gz")
        nib.save(nib.Nifti1Image(ct_hu, np.diag([4.0, 4.0, 3.0, 1.0])), data / f"{case_id}_ct.nii.gz")
    torch.manual_seed(0)
    model = build_model(TINY_UNET["name"], features=TINY_UNET["features"])
    config = {"model": TINY_UNET, "preprocess": {"patch_size": [16, 16, 16]}}
    checkpoint = tmp_path / "tiny.ckpt"
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    torch.save({"hyper_parameters": {"config": config}, "state_dict": state}, checkpoint)
    out = tmp_path / "out"
    port = str(_free_port())
    processes = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PYTHONPATH=os.pathsep.join(sys.path))
        command = [sys.executable, "-c", RANK_SCRIPT, str(checkpoint), str(out), str(data)]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()[-2000:]
    shares = [json.loads(stdout.decode().strip().splitlines()[-1]) for stdout, _ in outputs]
    assert shares == [ids[0::2], ids[1::2]]
    with (out / COHORT_SUMMARY).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["case_id"] for row in rows] == ids
    for case_id in ids:
        summary = json.loads((out / f"{case_id}_summary.json").read_text())
        row = next(r for r in rows if r["case_id"] == case_id)
        assert int(row["lesion_count"]) == summary["lesion_count"]
