"""Speed and peak memory of H2ASeg: our network, its naive-attention twin, the dual-branch
baseline and (when the mirror of the authors' repository is present) the official code.

Each configuration (row × batch × mode) runs in a fresh subprocess, so its peak memory is
its own: on CPU the peak resident set size (``ru_maxrss``) minus the resident size before
the first step (model and input already built), which counts everything torch allocates,
unlike ``tracemalloc``; on CUDA ``torch.cuda.max_memory_allocated``. Times are the median
of ``--repeats`` runs after one warm-up.

Modes: ``forward`` is ``model(x)`` in eval mode under ``no_grad`` (the official model has
no single-output path, so its row computes all five heads); ``train`` is a training-mode
forward of all five deep-supervision outputs, a weighted sum of their means and the
backward pass.

Usage:
    python benchmarks/model_speed.py --size 128 128 64 --batch 1 2 --threads 2 \
        --out benchmarks/results/model_speed_cpu.json
    python benchmarks/model_speed.py --quick --out /tmp/speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("model_speed")

ROWS = ("h2aseg", "h2aseg-naive", "h2aseg-baseline", "official-h2aseg", "official-resunet")
MODES = ("forward", "train")
DEEP_SUPERVISION_WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)
DEFAULT_MIRROR = Path("/work/.mirror/JinPLu+H2ASeg/repo")
OFFICIAL_FILES = ("H2ASeg", "MCSA", "Attention", "TAMW", "ResUNet", "modules")
QUICK_SIZE = (32, 32, 16)
QUICK_CHANNELS = (2, 4, 8, 16, 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(128, 128, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--batch", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=ROWS)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR, help="bare git mirror of JinPLu/H2ASeg")
    parser.add_argument("--out", type=Path, help="JSON file; a Markdown table is written beside it (.md)")
    parser.add_argument("--quick", action="store_true", help="tiny size and channels, one repeat (smoke test)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats = QUICK_SIZE, [1], 1
        args.rows = [row for row in args.rows if row in ("h2aseg", "h2aseg-baseline")]
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every configuration in its own subprocess and write JSON and Markdown."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    official_dir = None
    if any(row.startswith("official") for row in args.rows):
        official_dir = tempfile.TemporaryDirectory(prefix="h2aseg-official-")
        if not export_official_code(args.mirror, Path(official_dir.name)):
            logger.warning("official code not available at %s: skipping its rows", args.mirror)
            args.rows = [row for row in args.rows if not row.startswith("official")]
    results = []
    for row in args.rows:
        for batch in args.batch:
            for modes in [args.modes] if args.quick else [[mode] for mode in args.modes]:
                result = run_subprocess(args, row, batch, modes, official_dir.name if official_dir else None)
                logger.info("%s", result)
                results.extend(result)
    report = {"config": config_of(args), "results": results}
    if args.out:
        write_atomic(args.out, json.dumps(report, indent=2) + "\n")
        write_atomic(args.out.with_suffix(".md"), markdown_table(report))
    if official_dir:
        official_dir.cleanup()


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
        "memory": "peak RSS minus RSS before the first step (CPU); max_memory_allocated (CUDA)",
    }


def run_subprocess(
    args: argparse.Namespace, row: str, batch: int, modes: list[str], official_dir: str | None
) -> list[dict[str, object]]:
    """One fresh interpreter per configuration; its last stdout line is the JSON result list."""
    worker = {"row": row, "batch": batch, "modes": modes, "official_dir": official_dir}
    command = [sys.executable, __file__, "--worker", json.dumps(worker), "--size", *map(str, args.size)]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    command += ["--device", args.device, "--dtype", args.dtype] + (["--quick"] if args.quick else [])
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    env["OMP_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{row} batch {batch} {modes} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_official_code(mirror: Path, target: Path) -> bool:
    """Write the authors' model files from the bare mirror into ``target/model`` (never the repo)."""
    if not mirror.exists():
        return False
    (target / "model").mkdir(parents=True)
    for name in OFFICIAL_FILES:
        shown = subprocess.run(
            ["git", "-C", str(mirror), "show", f"HEAD:model/{name}.py"], capture_output=True, text=True, check=False
        )
        if shown.returncode != 0:
            return False
        (target / "model" / f"{name}.py").write_text(shown.stdout)
    return True


def einops_rearrange(x, pattern: str, **sizes: int):  # noqa: ANN001, ANN201 (mirrors einops' signature)
    """The subset of ``einops.rearrange`` the official code uses (axes and parenthesised groups),
    for machines without einops: reshape to elementary axes, permute, reshape to groups."""
    import math
    import re

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


def build_row(row: str, official_dir: str | None, quick: bool):  # noqa: ANN201 (an nn.Module)
    """The network of a benchmark row and a function mapping ``(B, 2, X, Y, Z)`` to its outputs."""
    channels = QUICK_CHANNELS if quick else (8, 16, 32, 64, 128)
    if row.startswith("official"):
        import types

        try:
            import einops  # noqa: F401
        except ImportError:
            sys.modules["einops"] = types.SimpleNamespace(rearrange=einops_rearrange)
        sys.path.insert(0, official_dir)
        if row == "official-h2aseg":
            from model.H2ASeg import H2ASeg as Official

            model = Official(list(QUICK_SIZE if quick else (128, 128, 64)), 1, 2, list(channels))
        else:
            from model.ResUNet import ResUNet as Official

            model = Official(1, 2, list(channels))
        return model, lambda m, x, deep: m(x[:, :1], x[:, 1:]) if deep else m(x[:, :1], x[:, 1:])[0]

    from h2aseg.models import build_model

    name, kwargs = ("h2aseg", {"attention_impl": "naive"}) if row == "h2aseg-naive" else (row, {})
    model = build_model(name, channels=channels, **kwargs)
    return model, lambda m, x, deep: m.forward_deep(x) if deep else m(x)


def run_worker(args: argparse.Namespace) -> list[dict[str, object]]:
    """Time and measure one (row, batch) for the given modes in this process."""
    import torch

    spec = json.loads(args.worker)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, run = build_row(spec["row"], spec["official_dir"], args.quick)
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
            loss = sum(w * out.float().mean() for w, out in zip(DEEP_SUPERVISION_WEIGHTS, outputs, strict=True))
        loss.backward()
        model.zero_grad(set_to_none=True)

    results = []
    for mode in spec["modes"]:
        step = forward if mode == "forward" else train
        before = _memory_now(device)
        seconds, cpu_seconds = [], []
        for _ in range(args.repeats + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - start_cpu)
        results.append(
            {
                "row": spec["row"],
                "batch": spec["batch"],
                "mode": mode,
                "seconds": round(statistics.median(seconds[1:]), 3),
                "seconds_all": [round(s, 3) for s in seconds],
                "cpu_seconds": round(statistics.median(cpu_seconds[1:]), 3),
                "peak_memory_mb": round(_memory_peak(device) - before, 1),
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    return results


def _memory_now(device) -> float:  # noqa: ANN001 (torch.device, imported lazily)
    """Current resident memory (CPU) or allocated memory (CUDA) in MB; resets the CUDA peak."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _memory_peak(device) -> float:  # noqa: ANN001
    """Peak resident memory of this process (CPU) or peak allocated memory (CUDA) in MB."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(report: dict[str, object]) -> str:
    """A Markdown table of the results, one line per row × batch, forward and train side by side."""
    config = report["config"]
    lines = [
        f"# Model speed: {config['device']}, {config['threads']} threads, size {config['size']}, {config['dtype']}",
        "",
        "| row | batch | parameters | forward s | forward MB | train step s | train MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    table: dict[tuple[str, int], dict[str, dict[str, object]]] = {}
    for result in report["results"]:
        table.setdefault((result["row"], result["batch"]), {})[result["mode"]] = result
    for (row, batch), modes in table.items():
        cells = [row, str(batch), f"{next(iter(modes.values()))['parameters']:,}"]
        for mode in MODES:
            found = modes.get(mode)
            cells += [f"{found['seconds']:.2f}", f"{found['peak_memory_mb']:.0f}"] if found else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


if __name__ == "__main__":
    main()
