"""Smoke test of ``benchmarks/model_speed.py --quick``: it runs and writes its JSON and table.

Figures are never asserted, only that they exist and are positive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "model_speed.py"


@pytest.mark.slow
def test_model_speed_quick(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    report = json.loads(out.read_text())
    assert report["config"]["quick"] is True
    measured = {(r["row"], r["mode"]) for r in report["results"]}
    assert measured == {(row, mode) for row in ("h2aseg", "h2aseg-baseline") for mode in ("forward", "train")}
    for result in report["results"]:
        assert result["seconds"] > 0 and result["cpu_seconds"] > 0 and result["peak_memory_mb"] >= 0
    table = out.with_suffix(".md").read_text()
    assert "| h2aseg | 1 | 453,815 |" in table
