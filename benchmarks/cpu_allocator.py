"""Training-step cost with glibc's default allocator thresholds and with ``keep_freed_memory``.

``python benchmarks/cpu_allocator.py [--size 64 64 32] [--batch 2] [--steps 5] [--threads 2]``
writes ``benchmarks/results/cpu_allocator.json`` (see :mod:`h2aseg.bench.allocator`).
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from h2aseg.bench.allocator import step_costs
from h2aseg.bench.harness import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--size", nargs=3, type=int, default=[64, 64, 32])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    settings = {"size": args.size, "batch": args.batch, "steps": args.steps, "threads": args.threads}
    rows = {
        variant: step_costs(tuned, tuple(args.size), args.batch, args.steps, args.threads)
        for variant, tuned in (("glibc defaults", False), ("keep_freed_memory", True))
    }
    meta = {"date": date.today().isoformat(), "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, **settings, "per_step": rows}
    (args.out / "cpu_allocator.json").write_text(json.dumps(result, indent=2))
    for variant, row in rows.items():
        print(f"{variant:>18}: " + ", ".join(f"{key} {value:.3f}" for key, value in row.items()))


if __name__ == "__main__":
    main()
