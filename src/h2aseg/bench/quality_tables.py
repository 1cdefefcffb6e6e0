"""Markdown and JSON of the quality benchmark: the paper's two tables with paired statistics.

Each cell is the mean ± std over seeds of the per-seed case means. The statistics columns compare
H2ASeg with each row case by case: each test case's Dice (cases with a lesion) is first averaged over
the seeds of a row, then :func:`h2aseg.evaluation.stats.paired_comparison` gives the mean of
H2ASeg − row in Dice points with a 95 % percentile-bootstrap interval and the Wilcoxon signed-rank p.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np

from h2aseg.bench.harness import machine
from h2aseg.evaluation.stats import mean_over_seeds, paired_comparison
from h2aseg.io import write_text_atomic

THRESHOLD_ROW = "SUV ≥ 2.5 threshold"
NNUNET_ROW = "nnU-Net v2 (3d_fullres)"
REFERENCE_ROW = "h2aseg"
METRICS = ("dice", "hd95", "precision", "recall")
HEADER = (
    "| {first} | params M | Dice (↑) | HD95 mm (↓) | Precision (↑) | Recall (↑) "
    "| H2ASeg − row, Dice points [95 % CI] | Wilcoxon p | seeds | steps | min/run |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def _cell(runs: list[dict], metric: str) -> str:
    """mean ± std over seeds of the per-seed means; percentages for Dice/precision/recall."""
    scale = 1.0 if metric == "hd95" else 100.0
    summaries = [run["summary"] for run in runs]
    values = [
        s[metric]["mean"] * scale
        for s in summaries
        if s[metric]["mean"] is not None and np.isfinite(s[metric]["mean"])
    ]
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else (summaries[0][metric]["std"] or 0.0) * scale
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def _comparison(name: str, records: dict[str, list[dict]]) -> tuple[str, str]:
    """The two statistics cells of row ``name`` against H2ASeg."""
    if name == REFERENCE_ROW or REFERENCE_ROW not in records:
        return "—", "—"
    reference = mean_over_seeds([run["per_case_dice"] for run in records[REFERENCE_ROW]])
    other = mean_over_seeds([run["per_case_dice"] for run in records[name]])
    result = paired_comparison(reference, other)
    interval = (
        f"{100 * result.mean_difference:+.2f} [{100 * result.ci_low:+.2f}, {100 * result.ci_high:+.2f}]"
    )
    return interval, f"{result.p_value:.2g}"


def _row(name: str, records: dict[str, list[dict]]) -> str:
    runs = records[name]
    trained = name != THRESHOLD_ROW
    parameters = f"{runs[0]['parameters'] / 1e6:.2f}" if trained and runs[0]["parameters"] else "—"
    steps = [run["steps"] for run in runs]
    cut = any(run["steps"] < run["planned_steps"] for run in runs)
    step_cell = (f"{min(steps)}" + (" (cut)" if cut else "")) if trained else "—"
    minutes = f"{statistics.mean(run['wall_s'] for run in runs) / 60:.1f}"
    delta, p_value = _comparison(name, records)
    cells = [parameters, *(_cell(runs, m) for m in METRICS), delta, p_value]
    cells += [str(len(runs)) if trained else "—", step_cell, minutes]
    return f"| {name} | " + " | ".join(cells) + " |"


def write_tables(
    records: dict[str, list[dict]],
    context: dict,
    out_dir: Path,
    quick: bool,
    table1: Sequence[str],
    table2: Sequence[str],
) -> Path:
    """Write ``quality{_quick}.md`` (both tables) and ``.json`` (every run record, per-case Dice
    included, so the statistics can be recomputed) into ``out_dir``; returns the markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "quality_quick" if quick else "quality"
    plan, split = context["plan"], context["split"]
    n_lesion = len(records[THRESHOLD_ROW][0]["per_case_dice"]) if THRESHOLD_ROW in records else 0
    meta = {
        "date": date.today().isoformat(),
        "machine": machine(),
        "command": " ".join(sys.argv),
        **context,
    }
    payload = {"meta": meta, "runs": records}
    write_text_atomic(out_dir / f"{stem}.json", json.dumps(payload, indent=2) + "\n")
    lines = [
        f"# Paper tables on the synthetic cohort ({meta['date']})",
        "",
        f"Tables written by `{meta['command']}` on {meta['machine']}; each run's own date and machine are "
        "in its record under `quality_runs/`. One recipe for every trained row "
        f"(`configs/phantom.yaml` at Adam {plan['learning_rate']:g}, every output started at foreground "
        f"probability {plan.get('output_prior')}, poly schedule to zero at epoch "
        f"{plan['epochs']}, batch Dice, "
        "lesion-centred patches, augmentation, EMA, no dropout), the same epochs over the same "
        f"{len(split['train'])} training cases (the same optimiser steps and patch), seeds as in the seeds "
        "column; "
        "rows differ only in the model and its widths (`REDUCED_BASELINES`). Cohort: "
        f"{plan['n_cases']} `small` phantoms (seed {plan['cohort_seed']}) with "
        f"{plan['mimics_per_case']} CT-only-separable mimics per case on average, split "
        f"{len(split['train'])} / {len(split['val'])} / {len(split['test'])} by patient "
        f"(`{Path(context['split_file']).name}`); scored on the {len(split['test'])} test cases, "
        f"{n_lesion} with a lesion. Cells: mean ± std over seeds of the per-seed case means (one seed: "
        "std over cases); Dice and HD95 over cases with a lesion, as the paper. Statistics: each test "
        "case's Dice averaged over a row's seeds, then paired over the cases with a lesion: mean of "
        "H2ASeg − row with a 95 % percentile-bootstrap interval (10,000 resamples, seed 0) and the "
        "two-sided Wilcoxon signed-rank p. min/run: wall minutes per run (training, prediction, "
        "evaluation); `(cut)`: the safety time limit stopped a run before its planned steps.",
        "",
        "## Table 1: methods",
        "",
        HEADER.format(first="Method"),
    ]
    lines += [_row(name, records) for name in [THRESHOLD_ROW, *table1] if name in records]
    lines += ["", "## Table 2: MCSA and TAMW", "", HEADER.format(first="Variant")]
    lines += [_row(name, records) for name in table2 if name in records]
    markdown = out_dir / f"{stem}.md"
    write_text_atomic(markdown, "\n".join(lines) + "\n")
    return markdown
