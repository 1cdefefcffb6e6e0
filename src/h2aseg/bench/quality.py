"""The paper's Table 1 and Table 2 on the synthetic cohort (``h2aseg bench --quality``).

One recipe for every trained row: ``configs/phantom.yaml`` (Adam, poly schedule to zero at the
last epoch, batch Dice, lesion-centred patches, augmentation, an EMA of the weights, no dropout)
with the same epochs over the same training cases, hence the same optimiser steps and patch size.
Rows differ only in ``model.*``: the name and the widths of :data:`REDUCED_BASELINES`, chosen for
1.2-2.8 M parameters like the reduced H2ASeg (1.8 M). The cohort is the ``small`` phantom with
CT-only-separable mimics (hot foci that only the CT tells from lesions), split by patient with a
large test part. Two reference rows show what the data asks for: the classical SUV ≥ 2.5
threshold, and H2ASeg trained on PET alone (CT channel zeroed). Runs are cached by their resolved
settings, so an interrupted benchmark continues where it stopped (a run cut mid-training resumes
from its last checkpoint).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from h2aseg.bench.quality_tables import NNUNET_ROW, THRESHOLD_ROW, write_tables
from h2aseg.io import write_text_atomic

logger = logging.getLogger(__name__)

PAPER_ROWS = ["unet3d", "vnet", "resunet3d", "unetr", "swin-unetr", "dynunet", "segresnet"]
MULTIMODAL_ROWS = ["nestedformer", "a2fseg", "sdb"]
"""The paper's multi-modal baselines: benchmarked when the registry has them."""
ABLATION_ROWS = ["h2aseg-baseline", "h2aseg-mcsa", "h2aseg-tamw", "h2aseg"]
PET_ONLY_ROW = "h2aseg-pet-only"
BENCHMARK_MIMICS = 1.5
"""Poisson mean of CT-only-separable mimics per case in the benchmark cohort (see docs/data.md)."""

# Widths for 1.2-2.8 M parameters, like the reduced H2ASeg of configs/phantom.yaml (1.8 M; parameter
# counts in the table). Swin-UNETR's smallest feature size is 12 (4.1 M). MONAI's VNet has no width
# argument and keeps its own (45.6 M); its 0.5 dropout is switched off, as every row trains without
# dropout.
REDUCED_BASELINES: dict[str, dict[str, object]] = {
    "unet3d": {"features": [9, 18, 36, 72, 144, 9]},
    "vnet": {"dropout_prob_down": 0.0, "dropout_prob_up": [0.0, 0.0]},
    "resunet3d": {"channels": [10, 20, 40, 80, 160]},
    "unetr": {"feature_size": 8, "hidden_size": 96, "mlp_dim": 384, "num_heads": 4},
    "swin-unetr": {"feature_size": 12},
    "dynunet": {"filters": [8, 16, 32, 64, 160], "spacing_mm": [4.0, 4.0, 4.0]},
    "segresnet": {"init_filters": 8},
    "nestedformer": {"features": [9, 9, 18, 36, 72, 9]},  # 72 = 8 heads x 9
    "a2fseg": {"filters": [7, 14, 28, 56, 112], "spacing_mm": [4.0, 4.0, 4.0]},
    "sdb": {"features": [7, 14, 28, 56, 112]},
}


@dataclass
class QualityPlan:
    """What one run of the benchmark trains and how long.

    Args:
        models: registered model names, one table row each.
        seeds: training seeds (the cohort and its split stay those of ``cohort_seed``).
        epochs: epochs per run, the same for every model (the learning rate reaches zero there); the
            optimiser steps are ``epochs × ceil(training cases / batch size)`` for every row.
        n_cases: size of the synthetic cohort.
        cohort_seed: seed of the cohort and the split.
        split_ratios: train : validation : test, counted in patients.
        min_test_lesion_cases: fewest test cases with a lesion (``ValueError`` otherwise).
        mimics_per_case: CT-only-separable mimics per case (Poisson mean).
        max_minutes: wall-time safety limit per run (``None``: none); a run it cuts is flagged.
        learning_rate: Adam's peak learning rate for every row (why 3e-3: :func:`row_settings`).
        extra_overrides: further config overrides for every row (e.g. ``trainer.accelerator=gpu``).
        nnunet_env: an nnU-Net v2 environment (``make nnunet-env``): adds the real nnU-Net as a
            reference row, trained for the same optimizer steps on the same split
            (:mod:`h2aseg.bench.nnunet`); ``None``: no such row.
    """

    models: list[str]
    seeds: list[int]
    epochs: int
    n_cases: int
    cohort_seed: int = 2024
    split_ratios: tuple[float, float, float] = (3, 1, 4)
    min_test_lesion_cases: int = 24
    mimics_per_case: float = BENCHMARK_MIMICS
    max_minutes: float | None = 120.0
    learning_rate: float = 3.0e-3
    extra_overrides: list[str] = field(default_factory=list)
    nnunet_env: str | None = None


def available_rows() -> list[str]:
    """Table rows to train: the paper's baselines, the multi-modal ones the registry has, the four
    Table 2 variants and PET-only."""
    from h2aseg.models import list_models

    registered = set(list_models())
    return [*PAPER_ROWS, *(n for n in MULTIMODAL_ROWS if n in registered), *ABLATION_ROWS, PET_ONLY_ROW]


def default_plan(quick: bool) -> QualityPlan:
    """Full plan (every row, three seeds, 50 epochs of the ~35 training cases, ~1,000 steps) or the
    quick smoke plan (two models, one seed, one epoch, a tiny cohort)."""
    if quick:
        return QualityPlan(
            models=["unet3d", "h2aseg"], seeds=[0], epochs=1, n_cases=6, split_ratios=(6, 2, 2),
            min_test_lesion_cases=0,
        )  # fmt: skip
    return QualityPlan(models=available_rows(), seeds=[0, 1, 2], epochs=50, n_cases=100)


def threshold_predictions(cases: list, out_dir: Path, threshold_suv: float = 2.5) -> None:
    """Write ``{case}_seg.nii.gz`` = PET ≥ ``threshold_suv`` on the PET grid for each case."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        pet = nib.load(case.pet)
        mask = (np.asarray(pet.dataobj, dtype=np.float32) >= threshold_suv).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, pet.affine), out_dir / f"{case.case_id}_seg.nii.gz")


def _model_overrides(name: str, config_path: Path) -> list[str]:
    """Overrides that give every H2ASeg row the phantom config's model arguments, the baselines the
    widths of :data:`REDUCED_BASELINES`, and the size-bound baselines the training patch."""
    from h2aseg.config import load_yaml

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
    """The largest of 5, 4, 3, 2, 1 that divides ``epochs``: a few validations, the last epoch among them."""
    return next(interval for interval in (5, 4, 3, 2, 1) if epochs % interval == 0)


def row_settings(name: str, seed: int, plan: QualityPlan, config_path: Path) -> list[str]:
    """The overrides of one run: the model's (name, widths) and the recipe's, which are the same for
    every row (seed, epochs, validation interval, safety limit, learning rate, the plan's extra
    overrides).

    The learning rate is 3e-3, not the demo's 1e-3: from a 50/50 start, a network must first push its
    logits to the background prior (the all-background plateau), and with Adam at 1e-3 UNet-3D took
    408 steps for that against H2ASeg's 33 (measured, docs/results.md); at 3e-3 it took 129.
    """
    limit = "null" if plan.max_minutes is None else plan.max_minutes
    return [
        *_model_overrides(name, config_path),
        f"seed={seed}",
        f"trainer.max_epochs={plan.epochs}",
        f"trainer.val_every={_validation_interval(plan.epochs)}",
        f"trainer.max_time_minutes={limit}",
        f"optim.lr={plan.learning_rate}",
        *plan.extra_overrides,
    ]


def _key(*parts: object) -> str:
    """Short hash of the given parts (JSON, bytes as they are)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()[:8]


def _truth_folder(cases: list, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        target = out_dir / f"{case.case_id}_seg.nii.gz"
        if not target.exists():
            os.symlink(Path(case.label).resolve(), target)
    return out_dir


def per_case_dice(evaluation_dir: Path) -> dict[str, float]:
    """Dice of each case with a lesion, from ``per_case.csv`` (its one class, ``lesion_dice`` and
    ``lesion_truth_voxels``): the pairing unit of the statistics."""
    with (evaluation_dir / "per_case.csv").open(encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        dice_column = next(name for name in reader.fieldnames or [] if name.endswith("_dice"))
        truth_column = dice_column.removesuffix("dice") + "truth_voxels"
        return {row["case_id"]: float(row[dice_column]) for row in reader if int(row[truth_column]) > 0}


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def prepare_cohort(plan: QualityPlan, work_dir: Path) -> tuple[Path, Path, list, str]:
    """Write (once) the cohort and its split; returns the data folder, the split file, the test cases
    and the cohort's key. Raises ``ValueError`` when the test part has too few cases with a lesion."""
    from h2aseg.data.layouts import read_dataset
    from h2aseg.data.splits import make_split
    from h2aseg.phantom.cohort import write_cohort
    from h2aseg.phantom.sampling import PRESETS

    cohort = {"n": plan.n_cases, "seed": plan.cohort_seed, "mimics": plan.mimics_per_case}
    cohort_key = _key(cohort, list(plan.split_ratios))
    data_dir = work_dir / f"data_{cohort_key}"
    if not (data_dir / ".complete").exists():
        preset = dataclasses.replace(PRESETS["small"], mimics_per_case=plan.mimics_per_case)
        write_cohort(data_dir, n_cases=plan.n_cases, seed=plan.cohort_seed, layout="autopet", preset=preset)
        (data_dir / ".complete").write_text(json.dumps(cohort))
    cases = read_dataset(data_dir, require_labels=True)
    split = make_split(cases, seed=plan.cohort_seed, ratios=tuple(plan.split_ratios))
    split_file = work_dir / f"split_{cohort_key}.json"
    split.save(split_file)
    test_cases = [case for case in cases if case.case_id in set(split.test)]
    with_lesion = sum(bool(np.asarray(nib.load(case.label).dataobj).any()) for case in test_cases)
    if with_lesion < plan.min_test_lesion_cases:
        raise ValueError(
            f"{split_file}: {with_lesion} test cases with a lesion, fewer than the "
            f"{plan.min_test_lesion_cases} asked for; raise n_cases or the test ratio"
        )
    logger.info(
        "cohort %s: %d training, %d validation, %d test cases (%d with a lesion)",
        data_dir, len(split.train), len(split.val), len(split.test), with_lesion,
    )  # fmt: skip
    return data_dir, split_file, test_cases, cohort_key


def _train_and_score(overrides: list[str], run_dir: Path, test_cases: list, truth_dir: Path) -> dict:
    """Train (resuming from ``last.ckpt`` if a previous attempt was cut), predict the test cases,
    evaluate; returns the run record written to ``run_dir/result.json``."""
    import torch

    from h2aseg.config import resolve_config
    from h2aseg.evaluation.evaluate import evaluate_folder
    from h2aseg.inference.checkpoint import build_network
    from h2aseg.inference.predictor import Predictor
    from h2aseg.training.train import CHECKPOINT_DIR, LAST_NAME, train

    config = resolve_config(_config_path(), overrides)
    last = run_dir / CHECKPOINT_DIR / f"{LAST_NAME}.ckpt"
    started = time.perf_counter()
    # Resume a run cut mid-training; redo one that never saved a checkpoint.
    best = train(_config_path(), overrides, resume=last.is_file(), overwrite=not last.is_file())
    trained = time.perf_counter()
    steps = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    predictor = Predictor.from_checkpoint(best, device="auto")
    prediction_dir = run_dir / "predictions"
    for case in test_cases:
        predictor.predict_case(case.ct, case.pet, prediction_dir, case.case_id)
    summary = evaluate_folder(prediction_dir, truth_dir, run_dir / "evaluation")
    n_train = len(json.loads(Path(config["data"]["split_file"]).read_text())["train"])
    return {
        "summary": summary,
        "per_case_dice": per_case_dice(run_dir / "evaluation"),
        "parameters": sum(p.numel() for p in build_network(config).parameters()),
        "steps": steps,
        "planned_steps": config["trainer"]["max_epochs"]
        * math.ceil(n_train / config["trainer"]["batch_size"]),
        "train_s": trained - started,
        "wall_s": time.perf_counter() - started,
    }


def _tables(plan: QualityPlan) -> tuple[list[str], list[str]]:
    """Rows of Table 1 (methods, H2ASeg and PET-only last) and Table 2 (the four variants)."""
    methods = [name for name in plan.models if name not in ABLATION_ROWS and name != PET_ONLY_ROW]
    return [*methods, NNUNET_ROW, "h2aseg", PET_ONLY_ROW], ABLATION_ROWS


def _config_path() -> Path:
    from h2aseg.pipeline.demo import phantom_config_path

    return phantom_config_path()


def run_quality_benchmark(
    out_dir: Path,
    quick: bool = False,
    plan: QualityPlan | None = None,
    work_dir: Path | None = None,
    tables_only: bool = False,
) -> dict[str, list[dict]]:
    """Train, predict and evaluate every row of the plan; write the tables; return all run records.

    The tables are rewritten after every run; a run whose ``result.json`` exists in ``work_dir`` is
    kept rather than retrained, so an interrupted benchmark continues where it stopped.

    Args:
        out_dir: results folder (``quality{_quick}.json`` and ``.md``).
        quick: use the quick plan when ``plan`` is not given.
        plan: models, seeds, budget and cohort.
        work_dir: where the cohort, the runs and the predictions go (default ``runs/bench_quality``).
        tables_only: train nothing; write the tables from the runs already evaluated in ``work_dir``.

    Returns:
        ``{row: [run record per finished seed]}``; a record holds ``summary`` (see
        :func:`h2aseg.evaluation.evaluate.evaluate_folder`), ``per_case_dice``, ``parameters``,
        ``steps``, ``planned_steps``, ``train_s`` and ``wall_s``.
    """
    from h2aseg.evaluation.evaluate import evaluate_folder

    plan = plan or default_plan(quick)
    work_dir = Path(work_dir or Path("runs") / ("bench_quality_quick" if quick else "bench_quality"))
    data_dir, split_file, test_cases, cohort_key = prepare_cohort(plan, work_dir)
    truth_dir = _truth_folder(test_cases, work_dir / f"truth_{cohort_key}")
    split = json.loads(split_file.read_text())
    context = {"plan": dataclasses.asdict(plan), "split": split, "split_file": str(split_file)}

    records: dict[str, list[dict]] = {}
    threshold_dir = work_dir / f"threshold_{cohort_key}"
    started = time.perf_counter()
    threshold_predictions(test_cases, threshold_dir / "predictions")
    summary = evaluate_folder(threshold_dir / "predictions", truth_dir, threshold_dir / "evaluation")
    records[THRESHOLD_ROW] = [
        {
            "summary": summary, "per_case_dice": per_case_dice(threshold_dir / "evaluation"),
            "parameters": 0, "steps": 0, "planned_steps": 0, "train_s": 0.0,
            "wall_s": time.perf_counter() - started,
        }
    ]  # fmt: skip
    config_path = _config_path()
    config_bytes = config_path.read_bytes()
    # Seeds outermost: a benchmark cut short still has every row for its first seeds.
    for seed in plan.seeds:
        for name in plan.models:
            settings = row_settings(name, seed, plan, config_path)
            run_dir = (
                work_dir / name / f"seed{seed}_{plan.epochs}ep_{_key(config_bytes, settings, cohort_key)}"
            )
            finished = run_dir / "result.json"
            if finished.is_file():
                logger.info("%s seed %d: already evaluated in %s, kept", name, seed, finished)
                records.setdefault(name, []).append(json.loads(finished.read_text()))
                continue
            if tables_only:
                continue
            overrides = [
                *settings,
                f"data.root={data_dir}",
                f"data.split_file={split_file}",
                f"output_dir={run_dir}",
            ]
            logger.info("training %s (seed %d, %d epochs)", name, seed, plan.epochs)
            record = _train_and_score(overrides, run_dir, test_cases, truth_dir)
            if record["steps"] < record["planned_steps"]:
                logger.warning(
                    "%s seed %d: the %s-minute safety limit cut training at step %d of %d",
                    name, seed, plan.max_minutes, record["steps"], record["planned_steps"],
                )  # fmt: skip
            _write_json(finished, record)
            records.setdefault(name, []).append(record)
            write_tables(records, context, Path(out_dir), quick, *_tables(plan))
        if plan.nnunet_env is not None:
            _nnunet_seed(plan, seed, work_dir, data_dir, split, truth_dir, records, tables_only)
            write_tables(records, context, Path(out_dir), quick, *_tables(plan))
    write_tables(records, context, Path(out_dir), quick, *_tables(plan))
    return records


def _nnunet_seed(
    plan: QualityPlan,
    seed: int,
    work_dir: Path,
    data_dir: Path,
    split: dict[str, list[str]],
    truth_dir: Path,
    records: dict[str, list[dict]],
    tables_only: bool,
) -> None:
    """Add the nnU-Net row's record of ``seed`` to ``records`` (trained unless ``tables_only``)."""
    from h2aseg.bench.nnunet import budget_trainer_name, run_nnunet_row
    from h2aseg.data.layouts import read_dataset

    steps = plan.epochs * math.ceil(len(split["train"]) / _batch_size(plan))
    if tables_only:
        finished = work_dir / "nnunet" / f"{budget_trainer_name(steps)}_seed{seed}" / "result.json"
        if finished.is_file():
            records.setdefault(NNUNET_ROW, []).append(json.loads(finished.read_text()))
        return
    cases = read_dataset(data_dir, require_labels=True)
    [record] = run_nnunet_row(work_dir, cases, split, truth_dir, [seed], steps, Path(plan.nnunet_env))
    records.setdefault(NNUNET_ROW, []).append(record)


def _batch_size(plan: QualityPlan) -> int:
    from h2aseg.config import resolve_config

    return int(resolve_config(_config_path(), plan.extra_overrides)["trainer"]["batch_size"])
