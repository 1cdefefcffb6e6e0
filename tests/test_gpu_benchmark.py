"""``benchmarks/gpu.py``: arguments and the JSON it writes, on the CPU at toy sizes (``--dry-run``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_script():
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(gpu_script) -> None:
    args = gpu_script.parse_args([])
    assert args.sections == list(gpu_script.SECTIONS) and not args.dry_run
    assert args.out.name == "gpu.json"
    with pytest.raises(SystemExit):
        gpu_script.parse_args(["--sections", "everything"])


@pytest.mark.slow  # H2ASeg's many small ops: ~2 s per toy training step on a loaded 2-core CPU
def test_dry_run_writes_the_training_table_and_whole_body_timings(gpu_script, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    document = gpu_script.main(["--dry-run", "--sections", "train_step", "whole_body", "--out", str(out)])
    assert json.loads(out.read_text()) == document and document["dry_run"] is True
    steps = [row for row in document["train_step"] if "train_step_ms" in row]
    assert {(row["row"], row["dtype"]) for row in steps} == {
        (name, dtype) for name in ("h2aseg", "h2aseg-baseline") for dtype in ("fp32", "bf16")
    }
    assert all(row["train_step_ms"] > 0 for row in steps)
    runs = document["whole_body"]
    assert len(runs) == 7 and {run["tta_flips"] for run in runs} == {1, 8}
    assert all(run["seconds"] > 0 and run["shape"] == list(gpu_script.DRY["volume"]) for run in runs)
    assert set(document["section_seconds"]) == {"train_step", "whole_body"}
