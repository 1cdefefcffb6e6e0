"""Input validation run by ``train`` and ``predict`` before any work: the checks of ``check-data``.

Each case goes through :func:`h2aseg.data.check.check_case` (readable 3-D files, CT/PET overlap,
no NaN/inf, CT in HU, PET in SUV, labels among the classes, CT covering the PET body); the first
problem becomes a ``ValueError`` naming the file, before anything is written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from h2aseg.data.check import MIN_CT_COVERAGE, Problem, check_case
from h2aseg.data.layouts import Case, CaseFiles

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputChecks:
    """What the validation accepts.

    Attributes:
        labels: label values a mask may hold (integers; anything else is refused).
        allow_non_suv: accept a PET whose range is not SUV (another tracer, other units).
        min_ct_coverage: least fraction of the PET's body extent the CT covers along each axis,
            in [0, 1]; 0 turns the check off.
    """

    labels: frozenset[int] = frozenset({0, 1})
    allow_non_suv: bool = False
    min_ct_coverage: float = MIN_CT_COVERAGE

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_ct_coverage <= 1.0:
            raise ValueError(f"min_ct_coverage must lie in [0, 1], got {self.min_ct_coverage}")


def case_problems(case: Case, checks: InputChecks) -> list[Problem]:
    """The problems of one case (its label checked when it has one)."""
    missing = {role for role, path in (("ct", case.ct), ("pet", case.pet)) if not Path(path).is_file()} | (
        {"label"} if case.label is None else set()
    )
    candidate = CaseFiles(
        case.case_id,
        case.patient_id,
        Path(case.ct),
        Path(case.pet),
        Path(case.label) if case.label is not None else Path(case.pet),
        frozenset(missing),
    )
    return check_case(
        candidate,
        set(checks.labels),
        label_expected=False,
        allow_non_suv=checks.allow_non_suv,
        min_ct_coverage=checks.min_ct_coverage,
    )


def find_problems(cases: Iterable[Case], checks: InputChecks) -> dict[str, list[Problem]]:
    """``{case_id: problems}`` of the cases that have any (clean cases are left out)."""
    found = {}
    for case in cases:
        problems = case_problems(case, checks)
        if problems:
            found[case.case_id] = problems
    return found


def require_valid(cases: Sequence[Case], checks: InputChecks) -> None:
    """Check every case; raise on the first problem.

    Raises:
        ValueError: ``"FILE: what is wrong"`` of the first problem, with the count of the others.
    """
    found = find_problems(cases, checks)
    if not found:
        logger.info("checked %d case(s): no problem", len(cases))
        return
    problems = [problem for listed in found.values() for problem in listed]
    for problem in problems[1:]:
        logger.error("%s", problem)
    more = f" (and {len(problems) - 1} more problem(s), listed above)" if len(problems) > 1 else ""
    raise ValueError(f"{problems[0]}{more}")
