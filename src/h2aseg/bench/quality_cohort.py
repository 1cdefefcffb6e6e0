"""The quality benchmark's cohort: the synthetic cases and their split (written once), the truth
folder, the SUV-threshold reference row and the per-case Dice that pairs the rows' statistics."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from h2aseg.bench.quality import QualityPlan

logger = logging.getLogger(__name__)


def short_key(*parts: object) -> str:
    """Short hash of the given parts (JSON, bytes as they are)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return digest.hexdigest()[:8]


def threshold_predictions(cases: list, out_dir: Path, threshold_suv: float = 2.5) -> None:
    """Write ``{case}_seg.nii.gz`` = PET ≥ ``threshold_suv`` on the PET grid for each case."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for case in cases:
        pet = nib.load(case.pet)
        mask = (np.asarray(pet.dataobj, dtype=np.float32) >= threshold_suv).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, pet.affine), out_dir / f"{case.case_id}_seg.nii.gz")


def truth_folder(cases: list, out_dir: Path) -> Path:
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


def prepare_cohort(plan: QualityPlan, work_dir: Path) -> tuple[Path, Path, list, str]:
    """Write (once) the cohort and its split; returns the data folder, the split file, the test cases
    and the cohort's key. Raises ``ValueError`` when the test part has too few cases with a lesion."""
    from h2aseg.data.layouts import read_dataset
    from h2aseg.data.splits import make_split
    from h2aseg.phantom.cohort import write_cohort
    from h2aseg.phantom.sampling import PRESETS

    cohort = {"n": plan.n_cases, "seed": plan.cohort_seed, "mimics": plan.mimics_per_case}
    cohort_key = short_key(cohort, list(plan.split_ratios))
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
