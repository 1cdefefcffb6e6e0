"""Training patches per second per data-loader worker: ``python benchmarks/pipeline.py --label after``.

Writes ``benchmarks/results/pipeline_cpu.json`` (see :mod:`h2aseg.bench.pipeline`). The phantoms
(two ``autopet``-preset studies, 400 × 400 × 360) and their preprocessed cache are kept in
``--work-dir`` so that later runs measure only the pipeline.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from h2aseg.bench.cohort import DEFAULT_CONFIG
from h2aseg.bench.pipeline import run_pipeline_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/h2aseg-bench-pipeline"))
    parser.add_argument("--label", default="after", help="name of this measurement in the results file")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--preset", default="autopet")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_pipeline_benchmark(
        args.out, args.work_dir, args.label, args.config, args.cases, args.batches, args.preset
    )


if __name__ == "__main__":
    main()
