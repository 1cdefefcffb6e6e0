"""The embedded default job: synthetic cohort -> train H2ASeg -> segment held-out cases -> metrics.

Runs on a fresh checkout with no data and no GPU (``h2aseg demo``, the README's ``make demo``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

logger = logging.getLogger(__name__)


def phantom_config_path() -> Path:
    """Path of the packaged ``configs/phantom.yaml``."""
    return Path(str(resources.files("h2aseg") / "configs" / "phantom.yaml"))


DEMO_TEST_CASES = 40
"""Further held-out cases the demo segments and scores beside its split's own test part: with the
split's 8 test cases alone (2 to 7 with a lesion) one missed lesion moved the demo's Dice by 14
points, and its figure overstated the held-out Dice by 15 to 20 points (docs/results.md)."""


def run_demo(
    out_dir: Path,
    n_cases: int = 40,
    seed: int = 0,
    max_minutes: float | None = None,
    extra_overrides: list[str] | None = None,
    test_cases: int = DEMO_TEST_CASES,
) -> dict:
    """Run the whole pipeline on a synthetic cohort and return the evaluation summary.

    The first ``n_cases`` studies of the cohort are split 6:2:2 by patient for training, validation
    and testing; ``test_cases`` further studies of the same cohort (whole patients, none of them in
    the split) join the test part. Training sees only the split, so it is the same whatever
    ``test_cases`` is.

    Writes ``out_dir/data`` (the cohort, AutoPET layout, and ``split.json``),
    ``out_dir/checkpoints/{best,last}.ckpt``, ``out_dir/predictions`` (masks, lesion reports,
    pictures of the test cases) and ``out_dir/evaluation/{per_case.csv,summary.json}``.

    Args:
        out_dir: output folder; created, must not be a file.
        n_cases: number of synthetic cases split 6:2:2 by patient.
        seed: seed of the cohort, the split and the training.
        max_minutes: wall-time budget of the training; ``None`` keeps the config's.
        extra_overrides: further ``key=value`` overrides of ``configs/phantom.yaml``.
        test_cases: further held-out studies (0: the split's test part alone).

    Returns:
        The evaluation summary (see :func:`h2aseg.evaluation.evaluate.evaluate_folder`).
    """
    import torch

    from h2aseg.config import resolve_config
    from h2aseg.data.splits import make_split
    from h2aseg.evaluation.evaluate import evaluate_folder, format_summary_table
    from h2aseg.inference.predictor import Predictor
    from h2aseg.phantom.cohort import write_cohort
    from h2aseg.training.train import CHECKPOINT_DIR, LAST_NAME, train

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: the output folder is a file")
    if n_cases < 5:
        raise ValueError(f"the demo needs at least 5 cases to split 6:2:2 by patient, got {n_cases}")
    if test_cases < 0:
        raise ValueError(f"the number of further test cases must be 0 or more, got {test_cases}")
    started = time.perf_counter()
    data_dir = out_dir / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    total = n_cases + test_cases
    logger.info("writing %d synthetic PET/CT cases to %s", total, data_dir)
    written = write_cohort(data_dir, n_cases=total, seed=seed, layout="autopet", preset="small")
    cases, further = written[:n_cases], written[n_cases:]
    split = make_split(cases, seed=seed)
    in_split = {case.patient_id for case in cases}
    new_patients = [case.case_id for case in further if case.patient_id not in in_split]
    split = dataclasses.replace(split, test=sorted([*split.test, *new_patients]))
    split_file = out_dir / "split.json"
    split.save(split_file)

    overrides = [
        f"data.root={data_dir}",
        f"data.split_file={split_file}",
        f"output_dir={out_dir}",
        f"seed={seed}",
    ]
    if max_minutes is not None:
        overrides.append(f"trainer.max_time_minutes={max_minutes}")
    overrides += list(extra_overrides or [])
    logger.info("training H2ASeg with %s", phantom_config_path())
    best = train(phantom_config_path(), overrides, overwrite=True)  # the demo redoes its own run
    trained = time.perf_counter()

    predictor = Predictor.from_checkpoint(best, device="auto")
    prediction_dir = out_dir / "predictions"
    truth_dir = out_dir / "evaluation" / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    held_out = [case for case in written if case.case_id in set(split.test)]
    for case in held_out:
        predictor.predict_case(case.ct, case.pet, prediction_dir, case.case_id)
        shutil.copyfile(case.label, truth_dir / f"{case.case_id}_seg.nii.gz")
    summary = evaluate_folder(prediction_dir, truth_dir, out_dir / "evaluation")
    finished = time.perf_counter()

    config = resolve_config(phantom_config_path(), overrides)
    per_epoch = math.ceil(len(split.train) / config["trainer"]["batch_size"])
    limit = config["trainer"]["limit_train_batches"]
    if limit is not None:
        per_epoch = min(per_epoch, limit) if isinstance(limit, int) else int(per_epoch * limit)
    planned = config["trainer"]["max_epochs"] * per_epoch
    if config["trainer"]["max_steps"] is not None:
        planned = min(planned, config["trainer"]["max_steps"])
    last = out_dir / CHECKPOINT_DIR / f"{LAST_NAME}.ckpt"
    steps = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
    console = Console()
    console.print(format_summary_table(summary), soft_wrap=True)  # rows never wrap, even in a log
    if steps < planned:
        console.print(
            f"[bold red]warning:[/] the safety time limit cut training at step {steps} of {planned}: "
            "this machine is slower than the demo was sized for, and the figures above are not the demo's"
        )
    console.print(
        f"{len(held_out)} held-out cases; training {steps} of {planned} steps in "
        f"{(trained - started) / 60:.1f} min, "
        f"total {(finished - started) / 60:.1f} min\n"
        f"checkpoints: {out_dir / 'checkpoints'}\n"
        f"masks, lesion reports (CSV/JSON) and MIP pictures: {prediction_dir}\n"
        f"metrics: {out_dir / 'evaluation' / 'per_case.csv'}, {out_dir / 'evaluation' / 'summary.json'}"
    )
    return summary
