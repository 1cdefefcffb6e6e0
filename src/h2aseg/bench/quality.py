"""The paper's Table 1 and Table 2 on the synthetic cohort (``h2aseg bench --quality``).

Every model is trained with the same data, split, augmentation, seed and number of epochs
(``configs/phantom.yaml``, its poly schedule ending at that epoch), then segments the same
held-out cases and is scored with
:func:`h2aseg.evaluation.evaluate.evaluate_folder`. Two reference rows show what the data asks
for: the classical SUV ≥ 2.5 threshold, and H2ASeg trained on PET alone (CT channel zeroed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np

logger = logging.getLogger(__name__)

PAPER_ROWS = [
    "unet3d",
    "vnet",
    "resunet3d",
    "unetr",
    "swin-unetr",
    "dynunet",
    "segresnet",
    "nestedformer",
    "a2fseg",
    "sdb",
]
ABLATION_ROWS = ["h2aseg-baseline", "h2aseg-mcsa", "h2aseg-tamw", "h2aseg"]
THRESHOLD_ROW = "SUV ≥ 2.5 threshold"
PET_ONLY_ROW = "h2aseg-pet-only"
METRICS = ("dice", "hd95", "precision", "recall")


@dataclass
class QualityPlan:
    """What one run of the benchmark trains and how long.

    Args:
        models: registered model names, one table row each.
        seeds: training seeds (the cohort and its split stay those of ``cohort_seed``).
        epochs: epochs per run, the same for every model (the learning rate reaches zero there).
        n_cases: size of the synthetic cohort (split 6:2:2 by patient).
        cohort_seed: seed of the cohort and the split.
        max_minutes: wall-time safety limit per run (``None``: none).
    """

    models: list[str]
    seeds: list[int]
    epochs: int
    n_cases: int
    cohort_seed: int = 2024
    max_minutes: float | None = 30.0


def default_plan(quick: bool) -> QualityPlan:
    """Full plan (every model, three seeds, 20 epochs = 240 steps) or the quick smoke plan (two models,
    one seed, one epoch)."""
    if quick:
        return QualityPlan(models=["unet3d", "h2aseg"], seeds=[0], epochs=1, n_cases=6)
    return QualityPlan(
        models=PAPER_ROWS + ABLATION_ROWS + [PET_ONLY_ROW], seeds=[0, 1, 2], epochs=20, n_cases=40
    )


def threshold_predictions(cases: list, out_dir: Path, threshold_suv: float = 2.5) -> None:
    """Write ``{case}_seg.nii.gz`` = PET ≥ ``threshold_suv`` on the PET grid for each case."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        pet = nib.load(case.pet)
        mask = (np.asarray(pet.dataobj, dtype=np.float32) >= threshold_suv).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, pet.affine), out_dir / f"{case.case_id}_seg.nii.gz")


# Baseline widths of the same class as the reduced H2ASeg of configs/phantom.yaml, whose two encoders
# together carry 8 → 128 features over five levels. At MONAI's default widths a CPU step of UNet-3D
# costs 1.2 s against H2ASeg's 0.63 s (64×64×32, batch 2), so in equal wall time the baselines would be
# judged on a fraction of the steps. MONAI's VNet has no width argument and keeps its own (16 → 256).
REDUCED_BASELINES: dict[str, dict[str, object]] = {
    "unet3d": {"features": [8, 16, 32, 64, 128, 8]},
    "resunet3d": {"channels": [8, 16, 32, 64, 128]},
    "unetr": {"feature_size": 8, "hidden_size": 192, "mlp_dim": 768, "num_heads": 4},
    "swin-unetr": {"feature_size": 12},
    "dynunet": {"filters": [8, 16, 32, 64, 128], "spacing_mm": [4.0, 4.0, 4.0]},
    "segresnet": {"init_filters": 8},
    # The multi-modal baselines at half their widths, like H2ASeg's 4 → 64 per modality.
    "nestedformer": {"features": [8, 8, 16, 32, 64, 8]},
    "a2fseg": {"filters": [8, 16, 32, 64, 128], "spacing_mm": [4.0, 4.0, 4.0]},
    "sdb": {"features": [8, 16, 32, 64, 128]},
}


def _model_overrides(name: str, config_path: Path) -> list[str]:
    """Overrides that give every H2ASeg row the phantom config's model arguments, the baselines the
    reduced widths of :data:`REDUCED_BASELINES`, and the size-bound baselines the training patch."""
    from h2aseg.training.config import load_yaml

    config = load_yaml(config_path)
    patch = config.get("preprocess", {}).get("patch_size", [64, 64, 32])
    model_args = {k: v for k, v in config.get("model", {}).items() if k != "name"}
    if not name.startswith("h2aseg"):
        model_args = dict(REDUCED_BASELINES.get(name, {}))
    if name == "unetr":
        model_args["img_size"] = patch
    if name in {"dynunet", "a2fseg"}:
        model_args["patch_size"] = patch
    if name == "nestedformer":
        model_args["reference_size"] = patch
    return [f"model.name={name}"] + [f"model.{key}={json.dumps(value)}" for key, value in model_args.items()]


def _validation_interval(epochs: int) -> int:
    """The largest of 4, 3, 2, 1 that divides ``epochs``: a few validations, the last epoch among them."""
    return next(interval for interval in (4, 3, 2, 1) if epochs % interval == 0)


def _settings_key(config_path: Path, settings: list[str]) -> str:
    """Short hash of the config file and a run's overrides: a finished run is reused only if both match."""
    payload = Path(config_path).read_bytes() + json.dumps(settings).encode()
    return hashlib.sha256(payload).hexdigest()[:8]


def _truth_folder(cases: list, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        target = out_dir / f"{case.case_id}_seg.nii.gz"
        if not target.exists():
            os.symlink(Path(case.label).resolve(), target)
    return out_dir


def run_quality_benchmark(
    out_dir: Path,
    quick: bool = False,
    plan: QualityPlan | None = None,
    work_dir: Path | None = None,
    tables_only: bool = False,
) -> dict:
    """Train, predict and evaluate every row of the plan; write the tables; return all summaries.

    The tables are rewritten after every run, and a run whose ``evaluation/summary.json`` exists in
    ``work_dir`` is kept rather than retrained, so an interrupted benchmark continues where it stopped.

    Args:
        out_dir: results folder (``quality{_quick}.json`` and ``.md``).
        quick: use the quick plan when ``plan`` is not given.
        plan: models, seeds, budget and cohort size.
        work_dir: where the cohort, the runs and the predictions go (default ``runs/bench_quality``).
        tables_only: train nothing; write the tables from the runs already evaluated in ``work_dir``.
    """
    from h2aseg.data.phantom import write_cohort
    from h2aseg.data.splits import make_split
    from h2aseg.demo import phantom_config_path
    from h2aseg.evaluation.evaluate import evaluate_folder
    from h2aseg.inference.predictor import Predictor
    from h2aseg.training.train import train

    plan = plan or default_plan(quick)
    work_dir = Path(work_dir or Path("runs") / ("bench_quality_quick" if quick else "bench_quality"))
    data_dir = work_dir / "data"
    if not data_dir.exists():
        write_cohort(data_dir, n_cases=plan.n_cases, seed=plan.cohort_seed, layout="autopet", preset="small")
    from h2aseg.data.layouts import read_dataset

    cases = read_dataset(data_dir, require_labels=True)
    split = make_split(cases, seed=plan.cohort_seed)
    split_file = work_dir / "split.json"
    split.save(split_file)
    test_cases = [case for case in cases if case.case_id in set(split.test)]
    truth_dir = _truth_folder(test_cases, work_dir / "truth")

    summaries: dict[str, list[dict]] = {}
    threshold_dir = work_dir / "threshold" / "predictions"
    threshold_predictions(test_cases, threshold_dir)
    summaries[THRESHOLD_ROW] = [evaluate_folder(threshold_dir, truth_dir, threshold_dir.parent)]
    config_path = phantom_config_path()
    # Seeds outermost: a benchmark cut short still has every row for its first seeds.
    for seed in plan.seeds:
        for name in plan.models:
            settings = [
                *_model_overrides(name, config_path),
                f"seed={seed}",
                f"trainer.max_epochs={plan.epochs}",
                f"trainer.max_time_minutes={'null' if plan.max_minutes is None else plan.max_minutes}",
            ]
            run_dir = work_dir / name / f"seed{seed}_{plan.epochs}ep_{_settings_key(config_path, settings)}"
            finished = run_dir / "evaluation" / "summary.json"
            if finished.is_file():
                logger.info("%s seed %d: already evaluated in %s, kept", name, seed, finished)
                summaries.setdefault(name, []).append(json.loads(finished.read_text()))
                continue
            if tables_only:
                continue
            overrides = [
                *settings,
                f"data.root={data_dir}",
                f"data.split_file={split_file}",
                f"output_dir={run_dir}",
                f"trainer.val_every={_validation_interval(plan.epochs)}",
            ]
            logger.info("training %s (seed %d, %d epochs)", name, seed, plan.epochs)
            best = train(config_path, overrides)
            predictor = Predictor.from_checkpoint(best, device="auto")
            prediction_dir = run_dir / "predictions"
            for case in test_cases:
                predictor.predict_case(case.ct, case.pet, prediction_dir, case.case_id)
            summaries.setdefault(name, []).append(
                evaluate_folder(prediction_dir, truth_dir, run_dir / "evaluation")
            )
            write_tables(summaries, plan, Path(out_dir), quick, n_test=len(test_cases))
    write_tables(summaries, plan, Path(out_dir), quick, n_test=len(test_cases))
    return summaries


def _cell(runs: list[dict], metric: str) -> str:
    """mean ± std over seeds of the per-seed means; percentages for Dice/precision/recall."""
    scale = 1.0 if metric == "hd95" else 100.0
    values = [
        run[metric]["mean"] * scale
        for run in runs
        if run[metric]["mean"] is not None and np.isfinite(run[metric]["mean"])
    ]
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else runs[0][metric]["std"] * scale
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def _row(name: str, runs: list[dict]) -> str:
    seeds = "—" if name == THRESHOLD_ROW else str(len(runs))
    return f"| {name} | " + " | ".join(_cell(runs, m) for m in METRICS) + f" | {seeds} |"


def write_tables(
    summaries: dict[str, list[dict]], plan: QualityPlan, out_dir: Path, quick: bool, n_test: int
) -> Path:
    """Markdown in the paper's format and the raw summaries as JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "quality_quick" if quick else "quality"
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "command": " ".join(sys.argv),
        "epochs_per_run": plan.epochs,
        "max_minutes_per_run": plan.max_minutes,
        "seeds": plan.seeds,
        "n_cases": plan.n_cases,
        "n_test_cases": n_test,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps({"meta": meta, "summaries": summaries}, indent=2))
    header = (
        "| Method | Dice (↑) | HD95 mm (↓) | Precision (↑) | Recall (↑) | seeds |\n|---|---|---|---|---|---|"
    )
    lines = [
        f"# Paper tables on the synthetic cohort ({meta['date']})",
        "",
        f"Command: `{meta['command']}`. Machine: {meta['machine']}. Every model trained for "
        f"{plan.epochs} epochs per seed (seeds {plan.seeds}; `configs/phantom.yaml`, poly schedule to "
        "zero at the last epoch, baselines at the reduced widths of `REDUCED_BASELINES`) on the same "
        f"{plan.n_cases}-case phantom cohort (small preset, split 6:2:2 by patient), "
        f"scored on the same {n_test} held-out cases. "
        "Cells: mean ± std over seeds of the per-seed case means (one seed: std over cases); Dice and HD95 "
        "over cases with lesions only, as the paper.",
        "",
        "## Table 1: methods",
        "",
        header,
    ]
    table1 = [THRESHOLD_ROW, *PAPER_ROWS, "h2aseg", PET_ONLY_ROW]
    table2 = ABLATION_ROWS
    for row in table1:
        if row in summaries:
            lines.append(_row(row, summaries[row]))
    lines += ["", "## Table 2: MCSA and TAMW", "", header.replace("Method", "Variant")]
    for row in table2:
        if row in summaries:
            lines.append(_row(row, summaries[row]))
    markdown = out_dir / f"{stem}.md"
    markdown.write_text("\n".join(lines) + "\n")
    return markdown
