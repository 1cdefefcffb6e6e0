"""The one benchmark harness: fresh interpreters, step timing, and the official-code path rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from h2aseg.bench.harness import BenchmarkError, report_result, run_fresh, time_steps

MODEL_SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "model_speed.py"


def test_run_fresh_returns_the_reported_result_or_the_last_error_line() -> None:
    report = "from h2aseg.bench.harness import report_result; print('[3]'); report_result([1, 2])"
    assert run_fresh(["-c", report]) == [1, 2]  # stdout is free for logs
    with pytest.raises(BenchmarkError, match="no result"):
        run_fresh(["-c", "print('[1, 2]')"])
    with pytest.raises(BenchmarkError, match="not set"):
        report_result([1])
    with pytest.raises(BenchmarkError, match="ValueError: broken"):
        run_fresh(["-c", "raise ValueError('broken')"])
    with pytest.raises(BenchmarkError, match="timed out"):
        run_fresh(["-c", "import time; time.sleep(5)"], timeout_s=0.5)


def test_time_steps_skips_the_warm_up_and_counts_every_step() -> None:
    calls: list[int] = []
    times = time_steps(lambda: calls.append(len(calls)), repeats=3, warmup=2)
    assert calls == [0, 1, 2, 3, 4]
    assert len(times.seconds) == len(times.user_s) == len(times.page_faults) == 3
    assert times.seconds_median >= 0 and set(times.means()) == {
        "seconds",
        "user_s",
        "system_s",
        "page_faults",
    }
    with pytest.raises(ValueError, match="repeats"):
        time_steps(lambda: None, repeats=0)


def _model_speed_module():
    spec = importlib.util.spec_from_file_location("model_speed", MODEL_SPEED)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_speed"] = module
    spec.loader.exec_module(module)
    return module


def test_official_rows_need_an_explicit_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("H2ASEG_OFFICIAL_DIR", raising=False)
    model_speed = _model_speed_module()
    with pytest.raises(SystemExit):
        model_speed.parse_args(["--rows", "official-h2aseg"])
    assert model_speed.parse_args(["--rows", "h2aseg"]).official_dir is None
    monkeypatch.setenv("H2ASEG_OFFICIAL_DIR", str(tmp_path))
    assert _model_speed_module().parse_args(["--rows", "official-h2aseg"]).official_dir == tmp_path
