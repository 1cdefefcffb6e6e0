"""nnU-Net v2 itself as the reference row of the quality benchmark.

The ``dynunet`` row of the quality table is an nnU-Net-like network inside h2aseg's own training
loop. This module runs the real thing, through nnU-Net's own command-line entry points, on exactly
the cases and the split of the other rows, and scores its predictions with h2aseg's
:func:`~h2aseg.evaluation.evaluate.evaluate_folder` like every other row:

1. :func:`export_raw_dataset`: the cohort in nnU-Net's raw layout (``imagesTr/{case}_0000`` = CT,
   ``_0001`` = PET, ``labelsTr``, ``imagesTs`` for the test cases). The channel names are ``CT`` and
   ``PET``: nnU-Net maps the name ``CT`` (case-insensitive) to its CT normalisation (clip to the
   0.5-99.5 percentiles of the foreground intensities of the whole training set, then z-score with
   the global mean and std: HU mean the same thing in every scan) and any other name to a per-image
   z-score, which is right for SUV, whose scale varies with the patient's uptake. Calling PET "CT"
   would clip hot lesions at the training set's 99.5th foreground percentile.
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres``, then :func:`write_fold_split` puts the
   benchmark's own train/validation split into ``splits_final.json`` as fold 0, so nnU-Net trains
   and validates on the same cases as the other rows and never sees the test cases.
3. ``nnUNetv2_train`` with a trainer variant that trains for exactly the other rows' optimizer steps
   (:func:`install_budget_trainer`: nnU-Net's default trainer with fewer epochs and iterations per
   epoch, the way its own ``nnUNetTrainer_Xepochs`` variants shorten training), seeded (nnU-Net has
   no seed option: the launcher seeds Python, NumPy and torch, then calls nnU-Net's own entry
   point; data augmentation runs in the main process, ``nnUNet_n_proc_DA=0``, so the seed decides it).
4. ``nnUNetv2_predict`` (nnU-Net's defaults: Gaussian sliding window, mirror TTA) on ``imagesTs``.

Everything is cached per seed (a finished step is not redone), so the row can be completed over
several invocations.

nnU-Net runs in a virtual environment of its own (``make nnunet-env``, or
:func:`~h2aseg.bench.nnunet_env.make_environment`),
never in h2aseg's: its dependencies (torchvision through timm) break Lightning's import there.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path

from h2aseg.bench.harness import machine
from h2aseg.bench.nnunet_env import NNUNET_VERSION as NNUNET_VERSION
from h2aseg.bench.nnunet_env import environment_python, require_nnunet
from h2aseg.bench.nnunet_env import installed_version as installed_version
from h2aseg.bench.nnunet_env import make_environment as make_environment
from h2aseg.io import write_text_atomic

logger = logging.getLogger(__name__)

DATASET_ID = 901
DATASET_NAME = f"Dataset{DATASET_ID:03d}_H2ASegPhantom"
CONFIGURATION = "3d_fullres"
ITERATIONS_PER_EPOCH = 250
"""nnU-Net's ``num_iterations_per_epoch``: optimizer steps in one of its epochs."""
DEFAULT_TRAINER = "nnUNetTrainer"
"""nnU-Net's default trainer: 1000 epochs x 250 iterations (the GPU reference budget)."""

_SEEDED_ENTRY = (
    "import random, sys\n"
    "import numpy, torch\n"
    "seed = int(sys.argv.pop(1))\n"
    "random.seed(seed); numpy.random.seed(seed); torch.manual_seed(seed)\n"
    "from nnunetv2.run.run_training import run_training_entry\n"
    "sys.argv[0] = 'nnUNetv2_train'\n"
    "run_training_entry()\n"
)


def budget_schedule(steps: int) -> tuple[int, int]:
    """nnU-Net epochs and iterations per epoch giving exactly ``steps`` optimizer steps: the fewest
    epochs whose iterations per epoch divide ``steps`` and do not exceed nnU-Net's 250.

    Example:
        >>> budget_schedule(1000)
        (4, 250)
        >>> budget_schedule(900)
        (4, 225)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    epochs = next(n for n in range(math.ceil(steps / ITERATIONS_PER_EPOCH), steps + 1) if steps % n == 0)
    return epochs, steps // epochs


def budget_trainer_name(steps: int) -> str:
    """Name of the trainer variant that trains for exactly ``steps`` optimizer steps."""
    return f"nnUNetTrainer_{steps}steps"


def install_budget_trainer(env_dir: Path, steps: int) -> str:
    """Add the trainer variant ``nnUNetTrainer_{steps}steps`` to the nnU-Net of ``env_dir``; its name.

    nnU-Net finds trainers by class name inside its own package (``nnUNetv2_train -tr NAME``), and its
    documented way to change the training length is a trainer subclass, as its shipped
    ``nnUNetTrainer_Xepochs`` variants do (in multiples of 250 steps). This one sets the epochs and
    iterations per epoch of :func:`budget_schedule`; everything else is nnU-Net's default trainer.
    The file goes into the benchmark's own nnU-Net environment, never into h2aseg's.
    """
    epochs, iterations = budget_schedule(steps)
    name = budget_trainer_name(steps)
    probe = "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"
    result = subprocess.run(
        [str(environment_python(env_dir)), "-c", probe], capture_output=True, text=True, check=True
    )
    folder = Path(result.stdout.strip()) / "training" / "nnUNetTrainer" / "variants" / "h2aseg_budget"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "__init__.py", "")
    source = (
        f'"""Written by h2aseg\'s quality benchmark: nnU-Net\'s default trainer for {steps} steps."""\n\n'
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n\n\n"
        f"class {name}(nnUNetTrainer):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        f"        self.num_epochs = {epochs}\n"
        f"        self.num_iterations_per_epoch = {iterations}\n"
    )
    write_text_atomic(folder / f"{name}.py", source)
    return name


def nnunet_environment(work_dir: Path, results_dir: Path, augmentation_processes: int = 1) -> dict[str, str]:
    """Environment of nnU-Net's commands: its three folders, the augmentation processes (0: in the
    training process, so the seed decides the augmentation), no ``torch.compile``."""
    return {
        **os.environ,
        "nnUNet_raw": str(work_dir / "nnUNet_raw"),
        "nnUNet_preprocessed": str(work_dir / "nnUNet_preprocessed"),
        "nnUNet_results": str(results_dir),
        "nnUNet_n_proc_DA": str(augmentation_processes),
        "nnUNet_compile": "f",
    }


def export_raw_dataset(
    cases: Sequence, train_ids: Sequence[str], test_ids: Sequence[str], raw_root: Path
) -> Path:
    """Write the cases in nnU-Net's raw layout and return the dataset folder.

    Args:
        cases: :class:`h2aseg.data.layouts.Case` objects with CT and PET on one grid (and labels for
            the training cases): the AutoPET-style layouts of the phantom.
        train_ids: cases for ``imagesTr``/``labelsTr`` (the benchmark's training and validation cases).
        test_ids: cases for ``imagesTs`` (no labels).
        raw_root: nnU-Net's ``nnUNet_raw`` folder.

    Files are symbolic links to the cohort (nnU-Net only reads them), so the export costs nothing.
    """
    from h2aseg.data.layouts import write_nnunet_dataset_json

    by_id = {case.case_id: case for case in cases}
    missing = sorted((set(train_ids) | set(test_ids)) - set(by_id))
    if missing:
        raise ValueError(f"{raw_root}: cases {missing[:3]} of the split are not in the cohort")
    folder = Path(raw_root) / DATASET_NAME
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)

    def link(source: Path, target: Path) -> None:
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(Path(source).resolve())

    for case_id in train_ids:
        case = by_id[case_id]
        if case.label is None:
            raise ValueError(f"{case.ct}: training case {case_id!r} has no label")
        link(case.ct, folder / "imagesTr" / f"{case_id}_0000.nii.gz")
        link(case.pet, folder / "imagesTr" / f"{case_id}_0001.nii.gz")
        link(case.label, folder / "labelsTr" / f"{case_id}.nii.gz")
    for case_id in test_ids:
        link(by_id[case_id].ct, folder / "imagesTs" / f"{case_id}_0000.nii.gz")
        link(by_id[case_id].pet, folder / "imagesTs" / f"{case_id}_0001.nii.gz")
    write_nnunet_dataset_json(
        folder,
        list(train_ids),
        labels={"background": 0, "lesion": 1},
        patients={case_id: by_id[case_id].patient_id for case_id in train_ids},
    )
    return folder


def write_fold_split(train_ids: Sequence[str], val_ids: Sequence[str], preprocessed_root: Path) -> Path:
    """Write ``splits_final.json`` with the benchmark's split as fold 0 and return its path."""
    path = Path(preprocessed_root) / DATASET_NAME / "splits_final.json"
    return write_text_atomic(
        path, json.dumps([{"train": sorted(train_ids), "val": sorted(val_ids)}], indent=2)
    )


def _run(command: list[str], env: dict[str, str], log_path: Path) -> None:
    """Run one nnU-Net command with its output in ``log_path``; one line naming the log on failure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("running %s (log: %s)", " ".join(command[:3]), log_path)
    with log_path.open("w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed with exit code {result.returncode}: see {log_path}")


def _nnunet_command(env_dir: Path, name: str) -> str:
    """Path of an nnU-Net console script of the environment ``env_dir``."""
    return str(Path(env_dir) / "bin" / name)


def plan_and_preprocess(work_dir: Path, env_dir: Path, processes: int = 1) -> Path:
    """``nnUNetv2_plan_and_preprocess`` for 3d_fullres (skipped when its plans exist); the plans file."""
    env = nnunet_environment(work_dir, work_dir / "nnUNet_results")
    plans = work_dir / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    data = plans.parent / f"nnUNetPlans_{CONFIGURATION}"
    if plans.is_file() and data.is_dir():
        return plans
    command = [
        _nnunet_command(env_dir, "nnUNetv2_plan_and_preprocess"),
        "-d", str(DATASET_ID), "-c", CONFIGURATION, "-np", str(processes), "--verify_dataset_integrity",
    ]  # fmt: skip
    _run(command, env, work_dir / "logs" / "plan_and_preprocess.log")
    return plans


def planned_network(plans_path: Path) -> dict[str, object]:
    """nnU-Net's planned patch size (voxels, its axis order), batch size, spacing and network."""
    plans = json.loads(Path(plans_path).read_text())
    configuration = plans["configurations"][CONFIGURATION]
    architecture = configuration["architecture"]
    return {
        "patch_size": configuration["patch_size"],
        "batch_size": configuration["batch_size"],
        "spacing_mm": configuration["spacing"],
        "normalization": configuration["normalization_schemes"],
        "network": architecture["network_class_name"].rsplit(".", 1)[-1],
        "features_per_stage": architecture["arch_kwargs"]["features_per_stage"],
        "n_stages": architecture["arch_kwargs"]["n_stages"],
    }


def train_and_predict(
    work_dir: Path, env_dir: Path, seed: int, trainer: str, prediction_dir: Path, device: str = "cpu"
) -> dict[str, float]:
    """Train fold 0 with ``trainer`` and ``seed``, then predict ``imagesTs`` into ``prediction_dir``.

    Each stage is skipped when its output is complete (``checkpoint_final.pth``, one mask per test
    image); a killed training resumes from nnU-Net's latest checkpoint (``--c``).

    Returns:
        Wall-clock seconds of the stages run in this call (``train_s``, ``predict_s``).
    """
    results_dir = work_dir / f"nnUNet_results_seed{seed}"
    env = nnunet_environment(work_dir, results_dir, augmentation_processes=0)
    model_dir = results_dir / DATASET_NAME / f"{trainer}__nnUNetPlans__{CONFIGURATION}"
    timings: dict[str, float] = {}
    if not (model_dir / "fold_0" / "checkpoint_final.pth").is_file():
        resume = ["--c"] if (model_dir / "fold_0" / "checkpoint_latest.pth").is_file() else []
        python = str(environment_python(env_dir))
        command = [python, "-c", _SEEDED_ENTRY, str(seed), str(DATASET_ID), CONFIGURATION, "0",
                   "-tr", trainer, "-device", device, *resume]  # fmt: skip
        started = time.perf_counter()
        _run(command, env, work_dir / "logs" / f"train_seed{seed}.log")
        timings["train_s"] = time.perf_counter() - started
    images = work_dir / "nnUNet_raw" / DATASET_NAME / "imagesTs"
    expected = {path.name.removesuffix("_0000.nii.gz") for path in images.glob("*_0000.nii.gz")}
    done = {path.name.removesuffix(".nii.gz") for path in prediction_dir.glob("*.nii.gz")}
    if not expected <= done:
        command = [_nnunet_command(env_dir, "nnUNetv2_predict"), "-i", str(images), "-o", str(prediction_dir),
                   "-d", str(DATASET_ID), "-c", CONFIGURATION, "-f", "0", "-tr", trainer,
                   "-device", device, "-npp", "1", "-nps", "1", "--disable_progress_bar"]  # fmt: skip
        started = time.perf_counter()
        _run(command, env, work_dir / "logs" / f"predict_seed{seed}.log")
        timings["predict_s"] = time.perf_counter() - started
    return timings


_COUNT_PARAMETERS = (
    "import json, sys\n"
    "from nnunetv2.utilities.get_network_from_plans import get_network_from_plans\n"
    "architecture = json.load(open(sys.argv[1]))['configurations'][sys.argv[2]]['architecture']\n"
    "network = get_network_from_plans(architecture['network_class_name'], architecture['arch_kwargs'],\n"
    "    architecture['_kw_requires_import'], 2, 2, allow_init=False, deep_supervision=True)\n"
    "print(sum(p.numel() for p in network.parameters()))\n"
)


def count_parameters(env_dir: Path, plans_path: Path) -> int:
    """Parameters of nnU-Net's planned 3d_fullres network for 2 channels and 2 classes.

    nnU-Net builds the network from its plans in its own environment; no checkpoint is unpickled.
    """
    result = subprocess.run(
        [str(environment_python(env_dir)), "-c", _COUNT_PARAMETERS, str(plans_path), CONFIGURATION],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(result.stdout.strip().splitlines()[-1])


def run_nnunet_row(
    work_dir: Path,
    cases: Sequence,
    split: dict[str, list[str]],
    truth_dir: Path,
    seeds: Sequence[int],
    steps: int,
    env_dir: Path,
    device: str = "cpu",
    trainer: str | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """The nnU-Net row of the quality table: one run record per seed, in the quality benchmark's format.

    Args:
        work_dir: the quality benchmark's work folder (nnU-Net's folders go to ``work_dir/nnunet``).
        cases: the benchmark cohort.
        split: its split (``{"train", "val", "test"}`` case ids).
        truth_dir: the test cases' ground-truth masks (as for every other row).
        seeds: training seeds.
        steps: the other rows' optimizer-step budget (nnU-Net trains exactly as many).
        env_dir: the nnU-Net environment (:func:`make_environment`).
        device: ``cpu`` or ``cuda``.
        trainer: an nnU-Net trainer name instead (e.g. ``nnUNetTrainer``, its 1000-epoch default).
        on_record: called with each newly finished record (the benchmark rewrites its tables there).

    Returns:
        Per seed, a record as the other rows' (``summary`` of ``evaluate_folder``, ``per_case_dice``,
        ``parameters``, ``steps``, ``planned_steps``, ``train_s``, ``wall_s``) plus an ``nnunet``
        block (version, trainer, planned patch and network, stage times).
    """
    from h2aseg.bench.quality_cohort import per_case_dice
    from h2aseg.evaluation.evaluate import evaluate_folder

    version = require_nnunet(env_dir)
    root = Path(work_dir) / "nnunet"
    train_ids = [*split["train"], *split["val"]]
    export_raw_dataset(cases, train_ids, list(split["test"]), root / "nnUNet_raw")
    started = time.perf_counter()
    plans = plan_and_preprocess(root, env_dir)
    write_fold_split(split["train"], split["val"], root / "nnUNet_preprocessed")
    plan_seconds = time.perf_counter() - started
    name = trainer or install_budget_trainer(env_dir, steps)
    epochs, iterations = budget_schedule(steps) if trainer is None else (None, None)
    records = []
    for seed in seeds:
        run_dir = root / f"{name}_seed{seed}"
        finished = run_dir / "result.json"
        if finished.is_file():
            records.append(json.loads(finished.read_text()))
            continue
        started = time.perf_counter()
        timings = train_and_predict(root, env_dir, seed, name, run_dir / "predictions", device=device)
        summary = evaluate_folder(run_dir / "predictions", truth_dir, run_dir / "evaluation")
        record = {
            "summary": summary,
            "per_case_dice": per_case_dice(run_dir / "evaluation"),
            "parameters": count_parameters(env_dir, plans),
            "steps": steps if trainer is None else None,
            "planned_steps": steps if trainer is None else None,
            "train_s": timings.get("train_s", 0.0),
            "wall_s": time.perf_counter() - started,
            "date": date.today().isoformat(),
            "machine": machine(),
            "nnunet": {
                "version": version, "trainer": name, "epochs": epochs, "iterations_per_epoch": iterations,
                "seed": seed, "device": device, "plan_and_preprocess_s": plan_seconds, **timings,
                **planned_network(plans),
            },
        }  # fmt: skip
        write_text_atomic(finished, json.dumps(record, indent=2) + "\n")
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records
