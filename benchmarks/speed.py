"""Speed, memory and scaling of every model: ``python benchmarks/speed.py [--quick] [--device cuda]``.

Writes ``benchmarks/results/speed_{device}.json`` and ``.md`` (see :mod:`h2aseg.bench.speed`).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from h2aseg.bench.speed import run_speed_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check")
    parser.add_argument("--models", nargs="*", default=None, help="default: every registered model")
    parser.add_argument("--volume-models", nargs="*", default=None, help="default: h2aseg, h2aseg-baseline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps")
    parser.add_argument("--volume-repeats", type=int, default=1, help="timed whole-volume predictions")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_speed_benchmark(
        args.out,
        quick=args.quick,
        models=args.models,
        device=args.device,
        dtypes=tuple(args.dtypes),
        repeats=args.repeats,
        volume_repeats=args.volume_repeats,
        volume_models=args.volume_models,
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
