"""The paper's Table 1 and Table 2 on the synthetic cohort.

``python benchmarks/phantom_table.py [--quick] [--epochs 50] [--seeds 0 1 2] [--models ...]
[--nnunet-env .venv-nnunet]``
writes ``benchmarks/results/quality.{json,md}`` (see :mod:`h2aseg.bench.quality`). The full run
trains every row for the same steps on each seed: many hours on a 2-core CPU. It is resumable: run
the same command again (same ``--work-dir``) and it continues where it stopped, keeping every
finished run; the tables are rewritten after each one.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from h2aseg.bench.quality import default_plan, run_quality_benchmark
from h2aseg.cpu_allocator import keep_freed_memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--work-dir", type=Path, default=None, help="cohort, runs and predictions")
    parser.add_argument("--quick", action="store_true", help="two models, one seed, seconds each")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per run")
    parser.add_argument("--max-minutes", type=float, default=None, help="wall-time safety limit per run")
    parser.add_argument("--cases", type=int, default=None, help="size of the synthetic cohort")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="config overrides for every row, e.g. trainer.accelerator=gpu (part of the runs' cache key)",
    )
    parser.add_argument(
        "--tables-only", action="store_true", help="train nothing: tabulate the runs already evaluated"
    )
    parser.add_argument(
        "--nnunet-env",
        type=Path,
        default=None,
        help="an nnU-Net v2 environment (make nnunet-env): adds nnU-Net itself as a reference row",
    )
    args = parser.parse_args()
    keep_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = default_plan(args.quick)
    plan.models = args.models or plan.models
    plan.seeds = args.seeds if args.seeds is not None else plan.seeds
    plan.epochs = args.epochs or plan.epochs
    plan.max_minutes = args.max_minutes or plan.max_minutes
    plan.n_cases = args.cases or plan.n_cases
    plan.extra_overrides = list(args.override)
    plan.nnunet_env = None if args.nnunet_env is None else str(args.nnunet_env.resolve())
    run_quality_benchmark(
        args.out, quick=args.quick, plan=plan, work_dir=args.work_dir, tables_only=args.tables_only
    )


if __name__ == "__main__":
    main()
