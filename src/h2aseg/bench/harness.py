"""The one benchmark harness: each measurement in a fresh interpreter (its memory peak and allocator
state are its own), step times as medians after a warm-up, CPU cost from ``getrusage``.

Used by :mod:`h2aseg.bench.speed`, :mod:`h2aseg.bench.allocator`, :mod:`h2aseg.bench.quality` and
``benchmarks/model_speed.py``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class BenchmarkError(RuntimeError):
    """A measurement that gave no result (failed or timed out); the message is one line."""


RESULT_FILE_VARIABLE = "H2ASEG_BENCH_RESULT"
"""Environment variable naming the file where a fresh interpreter's measurement writes its result."""


def run_fresh(
    argv: Sequence[str], timeout_s: float | None = None, env: Mapping[str, str] | None = None
) -> Any:
    """Run ``python *argv`` in a fresh interpreter and return what it passed to :func:`report_result`.

    The child learns the result file from ``H2ASEG_BENCH_RESULT``; its stdout stays free for logs.

    Raises:
        BenchmarkError: non-zero exit (the last line of its stderr is the message), timeout, or no result.
    """
    with tempfile.TemporaryDirectory(prefix="h2aseg-bench-") as folder:
        result_file = Path(folder) / "result.json"
        child_env = {**(os.environ if env is None else env), RESULT_FILE_VARIABLE: str(result_file)}
        try:
            done = subprocess.run(
                [sys.executable, *argv], capture_output=True, text=True, timeout=timeout_s, env=child_env
            )
        except subprocess.TimeoutExpired as error:
            raise BenchmarkError(f"timed out after {timeout_s:.0f} s") from error
        if done.returncode != 0:
            lines = (done.stderr or "").strip().splitlines()
            raise BenchmarkError(lines[-1] if lines else f"exit code {done.returncode}")
        if not result_file.is_file():
            raise BenchmarkError("the measurement reported no result")
        return json.loads(result_file.read_text())


def report_result(result: Any) -> None:
    """Hand ``result`` (JSON-serialisable) to the :func:`run_fresh` that started this interpreter."""
    path = os.environ.get(RESULT_FILE_VARIABLE)
    if not path:
        raise BenchmarkError(f"{RESULT_FILE_VARIABLE} is not set: run this measurement through run_fresh")
    Path(path).write_text(json.dumps(result))


@dataclass
class StepTimes:
    """Per-step costs of the timed steps (warm-up excluded): wall and CPU seconds, minor page faults."""

    seconds: list[float] = field(default_factory=list)
    user_s: list[float] = field(default_factory=list)
    system_s: list[float] = field(default_factory=list)
    page_faults: list[int] = field(default_factory=list)

    @property
    def seconds_median(self) -> float:
        """Median wall seconds of one step."""
        return statistics.median(self.seconds)

    @property
    def cpu_seconds_median(self) -> float:
        """Median user + system CPU seconds of one step (the steadier figure on a shared machine)."""
        return statistics.median(u + s for u, s in zip(self.user_s, self.system_s, strict=True))

    def means(self) -> dict[str, float]:
        """Mean ``seconds``, ``user_s``, ``system_s`` and ``page_faults`` per step."""
        return {
            name: statistics.fmean(getattr(self, name))
            for name in ("seconds", "user_s", "system_s", "page_faults")
        }


def time_steps(
    step: Callable[[], object], repeats: int, warmup: int = 1, synchronise: Callable[[], object] | None = None
) -> StepTimes:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times timed one by one.

    Args:
        step: one unit of work.
        repeats: timed runs (at least 1).
        warmup: untimed runs first (caches, allocator growth, autotuning).
        synchronise: waits for queued device work (``torch.cuda.synchronize``) around each timed run.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    wait = synchronise or (lambda: None)
    for _ in range(warmup):
        step()
    times = StepTimes()
    for _ in range(repeats):
        wait()
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        step()
        wait()
        after = resource.getrusage(resource.RUSAGE_SELF)
        times.seconds.append(time.perf_counter() - started)
        times.user_s.append(after.ru_utime - before.ru_utime)
        times.system_s.append(after.ru_stime - before.ru_stime)
        times.page_faults.append(after.ru_minflt - before.ru_minflt)
    return times


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    """Current resident set size of this process in MB (Linux ``/proc/self/statm``)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> str:
    """CPU model, core count and ``OMP_NUM_THREADS``, for the results' metadata."""
    cpu = platform.processor()
    if platform.system() == "Linux":
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
        cpu = names[0] if names else cpu
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    return f"{cpu or platform.machine()}, {os.cpu_count()} cores, threads {threads}"
