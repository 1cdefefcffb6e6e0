"""Speed and peak memory of H2ASeg: our network (plain, with attention checkpointing, with a
naive attention path, without attention dropout), the dual-branch baseline and, when the
mirror of the authors' repository is present, the official H2ASeg and dual-branch ResUNet.

Each configuration (row × batch × mode) runs in a fresh subprocess, so its peak memory is
its own. CPU: peak resident set size (``getrusage`` ``ru_maxrss``) minus the resident size
just before the first step (model and input built), which counts every allocation of
torch's native code (``tracemalloc`` sees only Python's); CUDA:
``torch.cuda.max_memory_allocated``. Times are medians over ``--repeats`` runs after one
warm-up: wall seconds and CPU seconds (user + system of the process). On a shared machine
the CPU seconds are the steadier figure; OpenMP threads wait passively
(``OMP_WAIT_POLICY=PASSIVE`` unless set), so waiting does not count as work.

Modes: ``forward`` is ``model(x)`` in eval mode under ``no_grad`` (the official model has no
single-output path, so its row computes all five heads); ``train`` is a training-mode
forward of all five deep-supervision outputs, a weighted sum of their means, and backward.

The authors' code is read from ``--official-dir`` (or the environment variable
``H2ASEG_OFFICIAL_DIR``; there is no default): a checkout of their repository or a bare git
mirror of it. Its model files are copied into a temporary folder outside the repository at run
time (never committed); without ``einops`` a small stand-in for ``einops.rearrange`` is
registered. Asking for the official rows without that path is an error.

Usage:
    python benchmarks/model_speed.py --size 128 128 64 --batch 1 2 --threads 2 \\
        --official-dir PATH/TO/H2ASeg --out benchmarks/results/model_speed_cpu.json
    python benchmarks/model_speed.py --rows h2aseg h2aseg-baseline --out /tmp/ours.json
    python benchmarks/model_speed.py --quick --out /tmp/speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

from h2aseg.bench.harness import BenchmarkError, peak_rss_mb, report_result, rss_now_mb, run_fresh, time_steps
from h2aseg.io import write_text_atomic

logger = logging.getLogger("model_speed")

OURS = {
    "h2aseg": ("h2aseg", {}),
    "h2aseg-checkpoint": ("h2aseg", {"checkpoint_attention": True}),
    "h2aseg-naive": ("h2aseg", {"attention_impl": "naive"}),
    "h2aseg-no-attention-dropout": ("h2aseg", {"attention_dropout": 0.0}),
    "h2aseg-baseline": ("h2aseg-baseline", {}),
}
OFFICIAL = ("official-h2aseg", "official-resunet")
ROWS = (*OURS, *OFFICIAL)
QUICK_ROWS = ("h2aseg", "h2aseg-baseline")
MODES = ("forward", "train")
DEEP_SUPERVISION_WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)
OFFICIAL_DIR_VARIABLE = "H2ASEG_OFFICIAL_DIR"
OFFICIAL_FILES = ("H2ASeg", "MCSA", "Attention", "TAMW", "ResUNet", "modules")
CHANNELS = (8, 16, 32, 64, 128)
QUICK_SIZE = (32, 32, 16)
QUICK_CHANNELS = (2, 4, 8, 16, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--batch", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument(
        "--official-dir",
        type=Path,
        default=os.environ.get(OFFICIAL_DIR_VARIABLE),
        help=f"the authors' repository (checkout or bare git mirror); default ${OFFICIAL_DIR_VARIABLE}",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON file, rewritten after every row; Markdown table beside it"
    )
    parser.add_argument("--quick", action="store_true", help="tiny size, channels and rows, one repeat")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats = QUICK_SIZE, [1], 1
        args.rows = [row for row in args.rows if row in QUICK_ROWS]
    if set(args.rows) & set(OFFICIAL) and args.official_dir is None:
        parser.error(
            f"the rows {', '.join(OFFICIAL)} need the authors' code: give --official-dir or set "
            f"{OFFICIAL_DIR_VARIABLE}, or choose other --rows"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every configuration in its own subprocess; write JSON and Markdown as results come."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.worker:
        report_result(run_worker(args))
        return
    with tempfile.TemporaryDirectory(prefix="h2aseg-official-") as official_dir:
        if set(args.rows) & set(OFFICIAL):
            export_official_code(args.official_dir, Path(official_dir))
        report: dict[str, object] = {"config": config_of(args), "results": []}
        for row in args.rows:
            for batch in args.batch:
                # --quick measures both modes in one process: its memory figures are cumulative.
                for modes in [args.modes] if args.quick else [[mode] for mode in args.modes]:
                    results = run_subprocess(args, row, batch, modes, official_dir)
                    for result in results:
                        logger.info("%s", result)
                    report["results"].extend(results)
                    if args.out:
                        write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
                        write_text_atomic(args.out.with_suffix(".md"), markdown_table(report))


def config_of(args: argparse.Namespace) -> dict[str, object]:
    """The settings of a run, for the JSON report."""
    import torch

    return {
        "size": list(args.size),
        "threads": args.threads,
        "repeats": args.repeats,
        "device": args.device,
        "dtype": args.dtype,
        "quick": args.quick,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "load_average_at_start": list(os.getloadavg()),
        "memory": "peak RSS minus RSS before the first step (CPU); max_memory_allocated (CUDA)",
    }


def run_subprocess(
    args: argparse.Namespace, row: str, batch: int, modes: list[str], official_dir: str
) -> list[dict[str, object]]:
    """One fresh interpreter per configuration; its last stdout line is the JSON result list."""
    worker = {"row": row, "batch": batch, "modes": modes, "official_dir": official_dir}
    command = [__file__, "--worker", json.dumps(worker), "--size", *map(str, args.size)]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    command += ["--device", args.device, "--dtype", args.dtype] + (["--quick"] if args.quick else [])
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    env["OMP_NUM_THREADS"] = str(args.threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        return run_fresh(command, env=env)
    except BenchmarkError as error:
        raise RuntimeError(f"{row} batch {batch} {modes} failed: {error}") from error


def export_official_code(source: Path, target: Path) -> None:
    """Copy the authors' model files from ``source`` (a checkout, or a bare git mirror read with
    ``git show``) into ``target/model``.

    Raises:
        SystemExit: a file is missing (the message names it).
    """
    (target / "model").mkdir(parents=True, exist_ok=True)
    for name in OFFICIAL_FILES:
        checkout = source / "model" / f"{name}.py"
        if checkout.is_file():
            text = checkout.read_text()
        else:
            command = ["git", "-C", str(source), "show", f"HEAD:model/{name}.py"]
            shown = subprocess.run(command, capture_output=True, text=True, check=False)
            if shown.returncode != 0:
                raise SystemExit(f"{source}: no model/{name}.py (a checkout or mirror of the authors' code?)")
            text = shown.stdout
        (target / "model" / f"{name}.py").write_text(text)


def einops_rearrange(x: object, pattern: str, **sizes: int) -> object:
    """The part of ``einops.rearrange`` the official code uses (named axes and parenthesised
    groups): reshape to elementary axes, permute, reshape to the output groups."""

    def groups(side: str) -> list[list[str]]:
        return [token.strip("()").split() for token in re.findall(r"\([^)]*\)|\S+", side)]

    left, right = (groups(side) for side in pattern.split("->"))
    known = dict(sizes)
    for group, size in zip(left, x.shape, strict=True):
        unknown = [axis for axis in group if axis not in known]
        if unknown:
            known[unknown[0]] = size // math.prod(known[a] for a in group if a in known)
    axes = [axis for group in left for axis in group]
    elementary = x.reshape([known[axis] for axis in axes])
    moved = elementary.permute([axes.index(axis) for group in right for axis in group])
    return moved.reshape([math.prod(known[axis] for axis in group) for group in right])


def build_row(row: str, official_dir: str, size: tuple[int, ...], quick: bool) -> tuple[object, Callable]:
    """The network of a row and ``run(model, x, deep)`` giving the finest or all five outputs."""
    channels = QUICK_CHANNELS if quick else CHANNELS
    if row in OFFICIAL:
        try:
            import einops  # noqa: F401
        except ImportError:
            sys.modules["einops"] = types.SimpleNamespace(rearrange=einops_rearrange)
        sys.path.insert(0, official_dir)
        if row == "official-h2aseg":
            from model.H2ASeg import H2ASeg

            model = H2ASeg(list(size), 1, 2, list(channels))
        else:
            from model.ResUNet import ResUNet

            model = ResUNet(1, 2, list(channels))

        def run_official(m: object, x: object, deep: bool) -> object:
            outputs = m(x[:, :1], x[:, 1:])
            return outputs if deep else outputs[0]

        return model, run_official

    from h2aseg.models import build_model

    name, kwargs = OURS[row]
    model = build_model(name, channels=channels, **kwargs)
    return model, lambda m, x, deep: m.forward_deep(x) if deep else m(x)


def run_worker(args: argparse.Namespace) -> list[dict[str, object]]:
    """Time and measure one (row, batch) for the given modes in this process."""
    import torch

    spec = json.loads(args.worker)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, run = build_row(spec["row"], spec["official_dir"], tuple(args.size), args.quick)
    model = model.to(device)
    x = torch.randn(spec["batch"], 2, *args.size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def forward() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            run(model, x, False)

    def train() -> None:
        model.train()
        with autocast:
            outputs = run(model, x, True)
            loss = sum(w * y.float().mean() for w, y in zip(DEEP_SUPERVISION_WEIGHTS, outputs, strict=True))
        loss.backward()
        model.zero_grad(set_to_none=True)

    results = []
    for mode in spec["modes"]:
        before = _memory_now(device)
        times = time_steps(
            forward if mode == "forward" else train,
            args.repeats,
            warmup=1,
            synchronise=(lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None,
        )
        results.append(
            {
                "row": spec["row"],
                "batch": spec["batch"],
                "mode": mode,
                "seconds": round(times.seconds_median, 3),
                "cpu_seconds": round(times.cpu_seconds_median, 3),
                "seconds_all": [round(s, 3) for s in times.seconds],
                "peak_memory_mb": round(_memory_peak(device) - before, 1),
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    return results


def _memory_now(device: object) -> float:
    """Current resident memory (CPU) or allocated memory (CUDA) in MB; resets the CUDA peak."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return rss_now_mb()


def _memory_peak(device: object) -> float:
    """Peak resident memory of this process (CPU) or peak allocated memory (CUDA) in MB."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def markdown_table(report: dict[str, object]) -> str:
    """One line per row × batch, forward and train side by side."""
    config = report["config"]
    size = ", ".join(map(str, config["size"]))
    header = ["row", "batch", "parameters"] + [
        f"{m} {c}" for m in ("forward", "train") for c in ("s", "CPU s", "MB")
    ]
    lines = [
        f"Device {config['device']}, {config['threads']} threads, input (B, 2, {size}), {config['dtype']}, "
        f"median of {config['repeats']} after a warm-up; CPU s = user + system.",
        "",
        "| " + " | ".join(header) + " |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    table: dict[tuple[str, int], dict[str, dict[str, object]]] = {}
    for result in report["results"]:
        table.setdefault((result["row"], result["batch"]), {})[result["mode"]] = result
    for (row, batch), modes in table.items():
        cells = [row, str(batch), f"{next(iter(modes.values()))['parameters']:,}"]
        for mode in MODES:
            found = modes.get(mode)
            if found:
                cells += [
                    f"{found['seconds']:.2f}",
                    f"{found['cpu_seconds']:.2f}",
                    f"{found['peak_memory_mb']:.0f}",
                ]
            else:
                cells += ["–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
