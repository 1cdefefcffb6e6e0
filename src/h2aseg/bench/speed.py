"""Speed, memory and scaling of every registered model (``h2aseg bench --speed``).

Each measurement runs in a fresh Python process, so the peak resident memory it reports
(``ru_maxrss`` on the CPU, ``torch.cuda.max_memory_allocated`` on a GPU) belongs to that
measurement alone. Figures are medians over ``repeats`` runs after one warm-up.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path

from rich.progress import track

from h2aseg.bench.harness import BenchmarkError, machine, peak_rss_mb, report_result, run_fresh, time_steps
from h2aseg.io import write_text_atomic

logger = logging.getLogger(__name__)

TRAIN_SIZE = (128, 128, 64)
VOLUME_SIZES = {
    "head-neck crop": (192, 192, 96),
    "half body": (256, 256, 160),
    "whole body (AutoPET)": (400, 400, 326),
}
QUICK_TRAIN_SIZE = (32, 32, 16)
QUICK_VOLUME_SIZES = {"tiny volume": (48, 48, 24)}
QUICK_CHANNELS = {"channels": (2, 4, 8, 16, 32)}


@dataclass
class SpeedResult:
    """One measurement: a model, a task (``train`` step or whole-``volume`` prediction) and a size."""

    model: str
    task: str
    size: tuple[int, int, int]
    batch: int
    device: str
    dtype: str
    parameters: int = 0
    gflops_forward: float | None = None
    seconds_median: float | None = None
    seconds_all: list[float] = field(default_factory=list)
    peak_memory_gb: float | None = None
    tflops_achieved: float | None = None
    error: str | None = None


def _small_overrides(name: str, size: tuple[int, int, int], quick: bool) -> dict:
    """Constructor overrides: fixed-size models get the patch size; quick mode shrinks widths."""
    overrides: dict = {}
    if name == "unetr":
        overrides["img_size"] = size
    if quick:
        if name.startswith("h2aseg"):
            overrides.update(QUICK_CHANNELS)
        elif name in {"unetr", "swin-unetr"}:
            overrides["feature_size"] = 12 if name == "swin-unetr" else 8
    return overrides


def measure(
    name: str,
    task: str,
    size: tuple[int, int, int],
    batch: int,
    device: str,
    dtype: str,
    repeats: int,
    quick: bool,
) -> SpeedResult:
    """Measure one model in this process (called in a fresh subprocess by :func:`run_speed_benchmark`)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from h2aseg.inference.predictor import sliding_window_logits
    from h2aseg.models import build_model
    from h2aseg.models.registry import DeeplySupervised

    result = SpeedResult(name, task, size, batch, device, dtype)
    torch.manual_seed(0)
    patch = QUICK_TRAIN_SIZE if quick else TRAIN_SIZE
    model = build_model(name, **_small_overrides(name, patch, quick)).to(device)
    result.parameters = sum(p.numel() for p in model.parameters())
    autocast_dtype = torch.bfloat16 if dtype == "bf16" else None
    use_cuda = device.startswith("cuda")

    def autocast():
        return torch.autocast(
            device_type="cuda" if use_cuda else "cpu",
            dtype=autocast_dtype or torch.float32,
            enabled=autocast_dtype is not None,
        )

    def synchronise() -> None:
        if use_cuda:
            torch.cuda.synchronize()

    if task == "train":
        model.train()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
        inputs = torch.randn(batch, 2, *size, device=device)
        target = torch.randint(0, 2, (batch, *size), device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad(), autocast():
            model.eval()(inputs[:1])
        result.gflops_forward = counter.get_total_flops() / 1e9
        model.train()

        deep = isinstance(model, DeeplySupervised)

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with autocast():
                outputs = model.forward_deep(inputs) if deep else [model(inputs)]
                loss = sum(torch.nn.functional.cross_entropy(o.float(), target) for o in outputs)
                if hasattr(model, "auxiliary_loss"):  # branch and consistency terms (A2FSeg, SDB)
                    loss = loss + model.auxiliary_loss(
                        target[:, None], lambda o, y: torch.nn.functional.cross_entropy(o, y[:, 0].long())
                    )
            loss.backward()
            optimiser.step()
    else:
        model.eval()
        volume = torch.randn(1, 2, *size, device=device)

        def warm_up() -> None:
            with torch.inference_mode(), autocast():
                model(volume[..., : patch[0], : patch[1], : patch[2]])

        def step() -> None:
            with torch.inference_mode(), autocast():
                sliding_window_logits(model, volume, patch, batch, overlap=0.25, mode="gaussian")

    if use_cuda:
        torch.cuda.reset_peak_memory_stats()
    # A whole volume warms up on one window: a full warm-up pass would double the cost of the largest sizes.
    if task == "volume":
        warm_up()
    times = time_steps(step, repeats, warmup=0 if task == "volume" else 1, synchronise=synchronise)
    result.seconds_all = times.seconds
    result.seconds_median = times.seconds_median
    result.peak_memory_gb = torch.cuda.max_memory_allocated() / 1024**3 if use_cuda else peak_rss_mb() / 1024
    if task == "train" and result.gflops_forward:
        # forward + backward is about three forwards, per sample of the batch
        result.tflops_achieved = 3 * result.gflops_forward * batch / result.seconds_median / 1e3
    return result


def _measure_in_subprocess(args: dict, timeout_s: float) -> SpeedResult:
    """Run :func:`measure` in a fresh interpreter and parse its JSON answer."""
    base = SpeedResult(
        args["name"], args["task"], tuple(args["size"]), args["batch"], args["device"], args["dtype"]
    )
    try:
        answer = run_fresh(["-m", "h2aseg.bench.speed", json.dumps(args)], timeout_s=timeout_s)
    except BenchmarkError as error:
        base.error = str(error)
        return base
    answer["size"] = tuple(answer["size"])
    return SpeedResult(**answer)


def run_speed_benchmark(
    out_dir: Path,
    quick: bool = False,
    models: list[str] | None = None,
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("fp32",),
    repeats: int = 3,
    volume_repeats: int = 1,
    volume_models: list[str] | None = None,
    threads: int | None = None,
    timeout_s: float = 1800,
) -> list[SpeedResult]:
    """Measure every model and write ``speed_{device}.json`` and ``speed_{device}.md`` to ``out_dir``.

    Args:
        out_dir: results folder.
        quick: tiny sizes and widths (a smoke check that takes a minute).
        models: model names (default: all registered).
        device: ``cpu`` or ``cuda``.
        dtypes: ``fp32`` and/or ``bf16`` (autocast).
        repeats: timed training steps after one warm-up; the median is reported.
        volume_repeats: timed whole-volume predictions (after a one-window warm-up).
        volume_models: models timed on whole volumes (default: ``h2aseg`` and ``h2aseg-baseline``).
        threads: torch threads in each measurement (default: all cores).
        timeout_s: limit per measurement.
    """
    from h2aseg.models import list_models

    names = models or list_models()
    train_size = QUICK_TRAIN_SIZE if quick else TRAIN_SIZE
    volume_sizes = QUICK_VOLUME_SIZES if quick else VOLUME_SIZES
    jobs = [
        {"name": n, "task": "train", "size": train_size, "batch": 2, "device": device, "dtype": d}
        for d in dtypes
        for n in names
    ]
    jobs += [
        {"name": n, "task": "volume", "size": s, "batch": 2, "device": device, "dtype": d}
        for d in dtypes
        for n in (volume_models or ["h2aseg", "h2aseg-baseline"])
        for s in volume_sizes.values()
    ]
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    results = []
    for job in track(jobs, description="benchmarking"):
        runs = repeats if job["task"] == "train" else volume_repeats
        result = _measure_in_subprocess({**job, "repeats": runs, "quick": quick}, timeout_s)
        logger.info(
            "%s %s %s: %s", job["name"], job["task"], job["size"], result.seconds_median or result.error
        )
        results.append(result)
        write_results(results, Path(out_dir), device, quick)  # after every job: a cut run keeps its rows
    return results


def write_results(results: list[SpeedResult], out_dir: Path, device: str, quick: bool) -> Path:
    """Write the JSON and a Markdown table; returns the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"{device.split(':')[0]}{'_quick' if quick else ''}"
    meta = {"date": date.today().isoformat(), "machine": machine(), "command": " ".join(sys.argv)}
    json_path = out_dir / f"speed_{suffix}.json"
    write_text_atomic(
        json_path, json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2)
    )
    lines = [
        f"# Speed and memory ({device}, {meta['date']})",
        "",
        f"Machine: {meta['machine']}. Median of the timed runs after one warm-up; "
        "peak memory of a fresh process (CPU: peak RSS; GPU: max allocated).",
        "",
        "| model | task | size | batch | dtype | params (M) | GFLOPs fwd (1 sample) | s (median) "
        "| peak GB | TFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        size = "×".join(map(str, r.size))
        if r.error:
            lines.append(
                f"| {r.model} | {r.task} | {size} | {r.batch} | {r.dtype} | | | failed: {r.error} | | |"
            )
            continue
        gflops = f"{r.gflops_forward:.1f}" if r.gflops_forward else ""
        tflops = f"{r.tflops_achieved:.3f}" if r.tflops_achieved else ""
        lines.append(
            f"| {r.model} | {r.task} | {size} | {r.batch} | {r.dtype} | {r.parameters / 1e6:.2f} | {gflops} "
            f"| {r.seconds_median:.2f} | {r.peak_memory_gb:.2f} | {tflops} |"
        )
    markdown_path = out_dir / f"speed_{suffix}.md"
    markdown_path.write_text("\n".join(lines) + "\n")
    return markdown_path


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    measured = measure(
        arguments["name"],
        arguments["task"],
        tuple(arguments["size"]),
        arguments["batch"],
        arguments["device"],
        arguments["dtype"],
        arguments["repeats"],
        arguments["quick"],
    )
    report_result(asdict(measured))
