"""Every GPU figure of issue 15 in one call (an estimated 6 to 7 minutes on an H200, never run on one yet).

Run ``python benchmarks/gpu.py``. Writes ``benchmarks/results/gpu.json`` (``--out``) after
every section, so a call cut short keeps what it measured. Sections (``--sections``, all by default):

- ``train_step``: ``(B=2, 2, 128, 128, 64)`` random input, forward of all five deep-supervision
  outputs, cross-entropy of each against random labels (nearest-downsampled), backward, Adam;
  median of 10 after 3 warm-ups, peak ``torch.cuda.max_memory_allocated``; rows: ours fp32 and
  bf16 autocast, ``h2aseg-baseline`` fp32 and bf16, and the authors' H2ASeg when
  ``H2ASEG_OFFICIAL_DIR`` names a checkout of their repository (its ``model/`` folder, loaded as
  ``benchmarks/model_speed.py`` does). Plus the eval forward at batch 1 (fp32).
- ``whole_body``: ``Predictor.predict_volume`` (bf16) on a 400 × 400 × 326 volume with a body
  (an elliptic cylinder of tissue, 300 × 220 voxels in-plane, air around it, as a whole-body
  field of view), overlap 0.5/0.25 × sw_batch 2/8, without and with the 8-flip TTA, and once
  without skipping air windows.
- ``demo``: ``h2aseg demo`` with ``trainer.accelerator=gpu trainer.precision=bf16-mixed``
  (20 cases, 1.5 minutes of training), wall seconds and the Dice it reached.
- ``train``: a short real ``h2aseg train`` at the paper's configuration (``configs/autopet.yaml``,
  128 × 128 × 64 patches, batch 2 × 2, bf16) on four autopet-preset phantoms, with steps per
  second (after the first 10 steps) and the GPU utilisation sampled by ``nvidia-smi`` every 0.5 s.

On a machine with only torch, Lightning, einops, typer, rich and scipy installed, carry the
other wheels in the working tree and install them first (no network there)::

    # here:  pip download monai nibabel connected-components-3d pydicom omegaconf pyyaml \\
    #            matplotlib --no-deps -d wheels/   (omit what the GPU machine already has)
    # there: pip install --no-index --no-deps wheels/*.whl && pip install --no-deps -e . \\
    #        && python benchmarks/gpu.py

``--dry-run`` runs every section at toy sizes on the CPU in seconds (what the test suite checks).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger("gpu")

SECTIONS = ("train_step", "whole_body", "demo", "train")
FULL = {"patch": (128, 128, 64), "volume": (400, 400, 326), "channels": None, "body": (300, 220)}
DRY = {"patch": (32, 32, 16), "volume": (32, 32, 16), "channels": (2, 4, 8, 16, 32), "body": (24, 20)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: checks the script")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="scratch folder (default: a temporary one)"
    )
    parser.add_argument("--train-seconds", type=float, default=60.0, help="length of the train section's run")
    return parser.parse_args(argv)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Atomic JSON write (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], object], device: torch.device, warmups: int, repeats: int) -> list[float]:
    for _ in range(warmups):
        step()
    _sync(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _models(sizes: dict[str, Any], work: Path) -> dict[str, tuple[torch.nn.Module, Callable]]:
    """Rows of the training-step table: network and ``run(model, x)`` giving the five outputs."""
    from h2aseg.models import build_model

    extra = {} if sizes["channels"] is None else {"channels": sizes["channels"]}
    rows: dict[str, tuple[torch.nn.Module, Callable]] = {
        name: (build_model(name, **extra), lambda m, x: m.forward_deep(x))
        for name in ("h2aseg", "h2aseg-baseline")
    }
    official = os.environ.get("H2ASEG_OFFICIAL_DIR")
    if official:
        sys.path.insert(0, str(Path(__file__).parent))
        from model_speed import build_row, export_official_code  # loaded as model_speed.py does

        export_official_code(Path(official), work / "official")
        model, run = build_row(
            "official-h2aseg", str(work / "official"), sizes["patch"], sizes["channels"] is not None
        )
        rows["official-h2aseg"] = (model, lambda m, x, run=run: run(m, x, True))
    return rows


def _train_step(
    model: torch.nn.Module,
    run: Callable,
    x: torch.Tensor,
    labels: torch.Tensor,
    optimizer: Any,
    autocast: Any,
) -> Callable[[], None]:
    """One step: the five outputs, cross-entropy of each (labels resized to it), backward, Adam."""

    def step() -> None:
        model.train()
        with autocast:
            outputs = run(model, x)
            loss = sum(
                F.cross_entropy(y.float(), F.interpolate(labels, size=y.shape[2:]).long()[:, 0])
                for y in outputs
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def train_step_table(
    device: torch.device, sizes: dict[str, Any], repeats: int, work: Path
) -> list[dict[str, Any]]:
    """Training step and eval forward of every row, fp32 and bf16 autocast."""
    results = []
    for name, (model, run) in _models(sizes, work).items():
        model = model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        x = torch.randn(2, 2, *sizes["patch"], device=device)
        labels = torch.randint(0, 2, (2, 1, *sizes["patch"]), device=device).float()
        for dtype in ("fp32", "bf16"):
            autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

            step = _train_step(model, run, x, labels, optimizer, autocast)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = _time(step, device, warmups=0 if repeats < 10 else 3, repeats=repeats)
            peak = torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None
            results.append(
                {"row": name, "dtype": dtype, "train_step_ms": round(1000 * statistics.median(seconds), 1)}
                | {"peak_gib": None if peak is None else round(peak, 2)}
            )
            logger.info("%s", results[-1])
        model.eval()
        single = x[:1]
        with torch.no_grad():
            forward = lambda m=model, s=single, r=run: r(m, s)[0]  # noqa: E731
            seconds = _time(forward, device, warmups=0 if repeats < 10 else 3, repeats=repeats)
        results.append(
            {"row": name, "dtype": "fp32", "eval_forward_b1_ms": round(1000 * statistics.median(seconds), 1)}
        )
        del model, optimizer
    return results


def body_volume(shape: tuple[int, int, int], body: tuple[int, int]) -> torch.Tensor:
    """``(1, 2, X, Y, Z)``: an elliptic cylinder of tissue (CT 0.52, PET 0.05 + noise) in air (0, 0)."""
    x = torch.linspace(-1, 1, shape[0]).view(-1, 1) * shape[0] / body[0]
    y = torch.linspace(-1, 1, shape[1]).view(1, -1) * shape[1] / body[1]
    inside = ((x**2 + y**2) <= 1).view(1, shape[0], shape[1], 1).expand(1, *shape)
    generator = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 2, *shape)
    image[:, 0] = inside * 0.52
    image[:, 1] = inside * (0.05 + 0.02 * torch.rand(1, *shape, generator=generator))
    return image


def whole_body(device: torch.device, sizes: dict[str, Any], warm_up: bool) -> list[dict[str, Any]]:
    """``predict_volume`` timings over overlap × sw_batch × TTA (and once without air skipping)."""
    from h2aseg.inference.predictor import Predictor
    from h2aseg.models import build_model

    extra = {} if sizes["channels"] is None else {"channels": sizes["channels"]}
    model = build_model("h2aseg", **extra)
    config = {"preprocess": {"patch_size": list(sizes["patch"])}}
    image = body_volume(sizes["volume"], sizes["body"])
    runs = [(0.5, 2, False, True), (0.5, 8, False, True), (0.25, 2, False, True), (0.25, 8, False, True)]
    runs += [(0.5, 2, True, True), (0.5, 8, True, True), (0.5, 2, False, False)]
    results = []
    for overlap, sw_batch, tta, skip_air in runs:
        predictor = Predictor(
            model, config, device, overlap=overlap, sw_batch_size=sw_batch, tta=tta, skip_air=skip_air
        )
        if warm_up:
            predictor.predict_volume(image[..., : sizes["patch"][2]])
        start = time.perf_counter()
        predictor.predict_volume(image)
        seconds = time.perf_counter() - start
        results.append(
            {"overlap": overlap, "sw_batch_size": sw_batch, "tta_flips": len(predictor.flips)}
            | {"skip_air": skip_air, "seconds": round(seconds, 2), "shape": list(sizes["volume"])}
        )
        logger.info("%s", results[-1])
    return results


def demo(work: Path, dry_run: bool) -> dict[str, Any]:
    """``h2aseg demo`` on the GPU (bf16); wall seconds and the test Dice."""
    from h2aseg.pipeline.demo import run_demo

    overrides = ["trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    if not dry_run:
        overrides = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "data.num_workers=4"]
    start = time.perf_counter()
    summary = run_demo(
        work / "demo",
        n_cases=5 if dry_run else 20,
        max_minutes=None if dry_run else 1.5,
        extra_overrides=overrides,
    )
    return {"seconds": round(time.perf_counter() - start, 1), "overrides": overrides, "summary": summary}


class _Sampler:
    """Samples ``nvidia-smi`` GPU utilisation (percent) every 0.5 s in a thread."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"]
        while not self._stop.wait(0.5):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0 and done.stdout.strip():
                self.samples.append(float(done.stdout.split()[0]))

    def __enter__(self) -> _Sampler:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def train_run(work: Path, dry_run: bool, seconds: float) -> dict[str, Any]:
    """A short real training at the paper's configuration; steps/s and GPU utilisation."""
    import lightning

    from h2aseg.config import resolve_config
    from h2aseg.phantom.cohort import write_cohort
    from h2aseg.training.train import run_training

    class StepClock(lightning.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *args: Any) -> None:
            self.times.append(time.perf_counter())

    config_path = Path(__file__).resolve().parents[1] / "configs" / "autopet.yaml"
    root = work / "autopet"
    write_cohort(
        root, 2 if dry_run else 4, seed=0, layout="autopet", preset="small" if dry_run else "autopet"
    )
    overrides = [f"data.root={root}", f"output_dir={work / 'run'}", f"data.cache_dir={work / 'cache'}"]
    overrides += ["data.split_ratios=[2,1,1]", "trainer.val_every=1000", "trainer.max_epochs=1000"]
    overrides += [f"trainer.max_time_minutes={seconds / 60}"]
    if dry_run:
        overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true", "data.num_workers=0"]
        overrides += [
            "preprocess.patch_size=[32,32,16]",
            "model.channels=[2,4,8,16,32]",
            "trainer.max_epochs=1",
        ]
    config = resolve_config(config_path, overrides)
    clock = StepClock()
    with _Sampler() as sampler:
        run_training(config, callbacks=[clock])
    steady = clock.times[10:] if len(clock.times) > 12 else clock.times
    steps_per_second = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else None
    return {
        "steps": len(clock.times),
        "steps_per_second": None if steps_per_second is None else round(steps_per_second, 2),
        "gpu_utilisation_mean_percent": round(statistics.mean(sampler.samples), 1)
        if sampler.samples
        else None,
        "gpu_utilisation_samples": len(sampler.samples),
        "overrides": overrides,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the chosen sections, writing the JSON after each; returns the document."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if args.dry_run:
        torch.set_num_threads(1)  # toy sizes: threads would only wait for each other
    sizes = DRY if args.dry_run else FULL
    document: dict[str, Any] = {
        "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dry_run": args.dry_run,
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
    }
    with tempfile.TemporaryDirectory(prefix="h2aseg-gpu-") as scratch:
        work = args.work_dir or Path(scratch)
        sections: dict[str, Callable[[], object]] = {
            "train_step": lambda: train_step_table(device, sizes, 1 if args.dry_run else 10, work),
            "whole_body": lambda: whole_body(device, sizes, warm_up=not args.dry_run),
            "demo": lambda: demo(work, args.dry_run),
            "train": lambda: train_run(work, args.dry_run, args.train_seconds),
        }
        for name in args.sections:
            start = time.perf_counter()
            try:
                document[name] = sections[name]()
            except Exception as error:  # one failed section must not lose the others' figures
                logger.exception("section %s failed", name)
                document[name] = {"error": f"{type(error).__name__}: {error}"}
            document.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
            write_json(args.out, document)
    return document


if __name__ == "__main__":
    main()
