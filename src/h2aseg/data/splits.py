"""Patient-level train/validation/test splits and k-fold cross-validation, saved as JSON.

Parts are drawn over patients, never over studies: AutoPET has several studies of one patient,
and a patient in two parts would leak. A split is written with its seed and ratios so that a run
can be reproduced exactly from the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from h2aseg.io import write_text_atomic

logger = logging.getLogger(__name__)

PARTS = ("train", "val", "test")


class HasPatient(Protocol):
    """Anything with a case id and a patient id (:class:`h2aseg.data.layouts.Case`)."""

    case_id: str
    patient_id: str


@dataclass
class Split:
    """Case ids of the training, validation and test parts.

    Attributes:
        train, val, test: case ids of each part (sorted).
        seed: seed the split was drawn with.
        ratios: relative sizes of the parts (train, val, test), in patients.
        fold: index of the cross-validation fold, ``None`` for a single split.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    ratios: tuple[float, float, float]
    fold: int | None = None

    def __post_init__(self) -> None:
        self.ratios = tuple(float(r) for r in self.ratios)  # type: ignore[assignment]
        seen: set[str] = set()
        for part in PARTS:
            ids = getattr(self, part)
            if seen & set(ids):
                raise ValueError(f"split: case(s) {sorted(seen & set(ids))} are in more than one part")
            seen |= set(ids)

    def save(self, path: Path) -> None:
        """Write the split as JSON (atomically)."""
        write_text_atomic(path, json.dumps({**asdict(self), "ratios": list(self.ratios)}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Split:
        """Read a split written by :meth:`save`.

        Raises:
            ValueError: the file is missing, not JSON, or lacks a part, the seed or the ratios.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such split file")
        try:
            content = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a JSON split file ({error})") from error
        missing = [
            key for key in (*PARTS, "seed", "ratios") if not isinstance(content, dict) or key not in content
        ]
        if missing:
            raise ValueError(f"{path}: split file lacks {', '.join(missing)}")
        parts = {part: [str(case_id) for case_id in content[part]] for part in PARTS}
        try:
            return cls(
                **parts, seed=int(content["seed"]), ratios=tuple(content["ratios"]), fold=content.get("fold")
            )
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def partition(self, cases: Sequence[HasPatient]) -> dict[str, list[HasPatient]]:
        """The cases of each part, in split order.

        Raises:
            ValueError: a case id of the split is not among ``cases``.
        """
        by_id = {case.case_id: case for case in cases}
        unknown = [case_id for part in PARTS for case_id in getattr(self, part) if case_id not in by_id]
        if unknown:
            raise ValueError(f"split: case(s) {unknown[:5]} are not in the dataset")
        return {part: [by_id[case_id] for case_id in getattr(self, part)] for part in PARTS}


def _patients(cases: Sequence[HasPatient]) -> dict[str, list[str]]:
    """Patient id → sorted case ids; raises on a duplicated case id."""
    by_patient: dict[str, list[str]] = {}
    seen: set[str] = set()
    for case in cases:
        if case.case_id in seen:
            raise ValueError(f"split: case id {case.case_id!r} appears twice")
        seen.add(case.case_id)
        by_patient.setdefault(case.patient_id, []).append(case.case_id)
    if not by_patient:
        raise ValueError("split: no cases to split")
    return {patient: sorted(ids) for patient, ids in sorted(by_patient.items())}


def _part_sizes(n_patients: int, ratios: Sequence[float]) -> list[int]:
    """Patients per part: largest remainders of the ratios, then at least one in every part with a
    positive ratio while the largest part can spare one."""
    weights = np.asarray(ratios, dtype=float)
    if weights.shape != (3,) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(
            f"split: ratios must be three non-negative numbers, not all zero, got {tuple(ratios)}"
        )
    exact = n_patients * weights / weights.sum()
    sizes = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - sizes), kind="stable")[: n_patients - sizes.sum()]:
        sizes[index] += 1
    for index in np.flatnonzero((weights > 0) & (sizes == 0)):
        donor = int(np.argmax(sizes))
        if sizes[donor] > 1:
            sizes[donor] -= 1
            sizes[index] += 1
    return sizes.tolist()


def make_split(cases: Sequence[HasPatient], seed: int, ratios: Sequence[float] = (6, 2, 2)) -> Split:
    """A seeded train/validation/test split by patient.

    Args:
        cases: cases with ``case_id`` and ``patient_id``.
        seed: seed of the shuffle of the patients.
        ratios: relative sizes (train, val, test), counted in patients.

    Returns:
        The split; every part with a positive ratio is non-empty when there are at least as many
        patients as such parts.
    """
    by_patient = _patients(cases)
    patients = list(by_patient)
    order = np.random.default_rng(seed).permutation(len(patients))
    sizes = _part_sizes(len(patients), ratios)
    bounds = np.cumsum([0, *sizes])
    parts = [
        sorted(c for i in order[bounds[k] : bounds[k + 1]] for c in by_patient[patients[i]]) for k in range(3)
    ]
    logger.debug("split %d patients into %s (seed %d)", len(patients), sizes, seed)
    return Split(*parts, seed=seed, ratios=tuple(ratios))  # type: ignore[arg-type]


def make_folds(cases: Sequence[HasPatient], k: int, seed: int, test_ratio: float = 0.2) -> list[Split]:
    """A fixed test part and ``k`` cross-validation folds of the other patients.

    Args:
        cases: cases with ``case_id`` and ``patient_id``.
        k: number of folds (at least 2).
        seed: seed of the shuffle of the patients.
        test_ratio: share of patients held out as the common test part (0 for none).

    Returns:
        ``k`` splits with the same test part; fold ``i`` validates on the ``i``-th group of the
        remaining patients and trains on the others.
    """
    if k < 2:
        raise ValueError(f"split: k-fold needs k >= 2, got {k}")
    if not 0 <= test_ratio < 1:
        raise ValueError(f"split: test_ratio must be in [0, 1), got {test_ratio}")
    by_patient = _patients(cases)
    patients = [list(by_patient)[i] for i in np.random.default_rng(seed).permutation(len(by_patient))]
    n_test = max(round(test_ratio * len(patients)), 1) if test_ratio > 0 else 0
    if len(patients) - n_test < k:
        raise ValueError(f"split: {len(patients)} patients cannot make {k} folds and a test part of {n_test}")
    test = sorted(c for p in patients[:n_test] for c in by_patient[p])
    groups = np.array_split(np.arange(n_test, len(patients)), k)
    share = (1 - test_ratio) / k
    splits = []
    for fold, group in enumerate(groups):
        val_patients = {patients[i] for i in group}
        rest = [p for p in patients[n_test:] if p not in val_patients]
        train = sorted(c for p in rest for c in by_patient[p])
        val = sorted(c for p in val_patients for c in by_patient[p])
        splits.append(
            Split(train, val, test, seed=seed, ratios=(share * (k - 1), share, test_ratio), fold=fold)
        )
    return splits
