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

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from h2aseg.bench.harness import machine
from h2aseg.bench.quality_cohort import (
    per_case_dice,
    prepare_cohort,
    short_key,
    threshold_predictions,
    truth_folder,
)
from h2aseg.bench.quality_tables import NNUNET_ROW, THRESHOLD_ROW, write_tables
from h2aseg.config import resolve_config, to_plain
from h2aseg.io import write_text_atomic

logger = logging.getLogger(__name__)

PAPER_ROWS = ["unet3d", "vnet", "resunet3d", "unetr", "swin-unetr", "dynunet", "segresnet"]
MULTIMODAL_ROWS = ["nestedformer", "a2fseg", "sdb"]
"""The paper's multi-modal baselines: benchmarked when the registry has them."""
ABLATION_ROWS = ["h2aseg-baseline", "h2aseg-mcsa", "h2aseg-tamw", "h2aseg"]
PET_ONLY_ROW = "h2aseg-pet-only"
DEFAULT_SEEDS = (0, 1, 2)
RUNS_FOLDER = "quality_runs"
"""Folder of the results folder that keeps every finished run's record (committed with the tables, so
a table is completed over several sessions and machines)."""
NNUNET_ROW_FOLDER = "nnunet"
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
    "a2fseg": {"filters": [7, 14, 28, 56, 112], "spacing_mm": [4.0, 4.0, 4.0], "output_bias": True},
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
        learning_rate: Adam's peak learning rate for every row (why 1e-3: :func:`row_settings`).
        output_prior: foreground probability every row starts at (``optim.output_prior``).
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
    learning_rate: float = 1.0e-3
    output_prior: float | None = 0.01
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
    return QualityPlan(models=available_rows(), seeds=list(DEFAULT_SEEDS), epochs=50, n_cases=100)


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
    every row (seed, epochs, validation interval, safety limit, learning rate, output prior, the plan's
    extra overrides).

    Every row starts at the foreground prior (``optim.output_prior``): from the usual ~50 % start a
    network must first push its logits to the background prior, and with Adam at 1e-3 UNet-3D took 408
    steps for that against H2ASeg's 33 (measured, docs/results.md). Raising the rate to 3e-3 for
    everyone shortened that for UNet-3D but cost H2ASeg half its Dice (docs/results.md), so the
    plateau is removed at its cause instead, and every row trains at the demo's 1e-3.
    """
    limit = "null" if plan.max_minutes is None else plan.max_minutes
    prior = "null" if plan.output_prior is None else plan.output_prior
    return [
        *_model_overrides(name, config_path),
        f"seed={seed}",
        f"trainer.max_epochs={plan.epochs}",
        f"trainer.val_every={_validation_interval(plan.epochs)}",
        f"trainer.max_time_minutes={limit}",
        f"optim.lr={plan.learning_rate}",
        f"optim.output_prior={prior}",
        *plan.extra_overrides,
    ]


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


def _train_and_score(overrides: list[str], run_dir: Path, test_cases: list, truth_dir: Path) -> dict:
    """Train (resuming from ``last.ckpt`` if a previous attempt was cut), predict the test cases,
    evaluate; returns the run record written to ``run_dir/result.json``."""
    import torch

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
        "date": date.today().isoformat(),
        "machine": machine(),
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
    truth_dir = truth_folder(test_cases, work_dir / f"truth_{cohort_key}")
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
    runs_dir = Path(out_dir) / RUNS_FOLDER
    trained = {(name, seed) for seed in plan.seeds for name in plan.models}
    table_plan = dataclasses.replace(
        plan,
        models=list(dict.fromkeys([*plan.models, *([] if quick else available_rows())])),
        seeds=sorted(set(plan.seeds) | set(() if quick else DEFAULT_SEEDS)),
    )
    # Seeds outermost: a benchmark cut short still has every row for its first seeds.
    for seed in table_plan.seeds:
        for name in table_plan.models:
            settings = row_settings(name, seed, plan, config_path)
            key = run_key(resolve_config(config_path, settings), cohort_key)
            stem = f"seed{seed}_{plan.epochs}ep_{key}"
            committed = runs_dir / name / f"{stem}.json"
            run_dir = work_dir / name / stem
            finished = run_dir / "result.json"
            if committed.is_file() or finished.is_file():
                source = committed if committed.is_file() else finished
                logger.info("%s seed %d: already evaluated (%s), kept", name, seed, source)
                record = json.loads(source.read_text())
                _write_json(committed, record)
                records.setdefault(name, []).append(record)
                continue
            if tables_only or (name, seed) not in trained:
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
            _write_json(committed, record)
            records.setdefault(name, []).append(record)
            write_tables(records, context, Path(out_dir), quick, *_tables(table_plan))
        if plan.nnunet_env is not None or not quick:
            nnunet_trains = plan.nnunet_env is not None and seed in plan.seeds and not tables_only
            _nnunet_seed(plan, seed, work_dir, data_dir, split, truth_dir, records, runs_dir, nnunet_trains)
            write_tables(records, context, Path(out_dir), quick, *_tables(table_plan))
    write_tables(records, context, Path(out_dir), quick, *_tables(table_plan))
    return records


def run_key(config: dict, cohort_key: str) -> str:
    """Cache key of one run: its resolved config without the machine's paths, and the cohort's key.

    Editing a comment of ``configs/phantom.yaml`` or moving the work folder keeps the key; changing
    any setting of the run changes it.
    """
    config, paths = to_plain(config), {"root", "split_file", "cache_dir"}
    settings = {section: values for section, values in config.items() if section != "output_dir"}
    settings["data"] = {key: value for key, value in config["data"].items() if key not in paths}
    return short_key(settings, cohort_key)


def _nnunet_seed(
    plan: QualityPlan,
    seed: int,
    work_dir: Path,
    data_dir: Path,
    split: dict[str, list[str]],
    truth_dir: Path,
    records: dict[str, list[dict]],
    runs_dir: Path,
    train: bool,
) -> None:
    """Add the nnU-Net row's record of ``seed`` to ``records``: the committed one, the work folder's, or
    (``train``) a new run."""
    from h2aseg.bench.nnunet import budget_trainer_name, run_nnunet_row
    from h2aseg.data.layouts import read_dataset

    steps = plan.epochs * math.ceil(len(split["train"]) / _batch_size(plan))
    cohort_key = data_dir.name.removeprefix("data_")
    committed = runs_dir / NNUNET_ROW_FOLDER / f"seed{seed}_{steps}steps_{cohort_key}.json"
    finished = work_dir / "nnunet" / f"{budget_trainer_name(steps)}_seed{seed}" / "result.json"
    if committed.is_file() or finished.is_file():
        record = json.loads((committed if committed.is_file() else finished).read_text())
    elif train:
        cases = read_dataset(data_dir, require_labels=True)
        [record] = run_nnunet_row(work_dir, cases, split, truth_dir, [seed], steps, Path(plan.nnunet_env))
    else:
        return
    _write_json(committed, record)
    records.setdefault(NNUNET_ROW, []).append(record)


def _batch_size(plan: QualityPlan) -> int:

    return int(resolve_config(_config_path(), plan.extra_overrides)["trainer"]["batch_size"])
