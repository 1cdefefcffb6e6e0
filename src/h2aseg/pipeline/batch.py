"""``predict``: the library function behind ``h2aseg predict`` (one NIfTI pair, a dataset, a DICOM study).

Every case is validated (:mod:`h2aseg.data.validate`) before the first window. A dataset run goes
on past a bad case and reports the failures at the end; a case whose files are all there is
skipped (``overwrite`` redoes it), so a run that was killed finishes on the next call. Temporary
files of killed runs are removed at the start; DICOM is converted inside the output folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import track
from rich.table import Table

from h2aseg.data.check import MIN_CT_COVERAGE
from h2aseg.data.dicom import convert_dicom
from h2aseg.data.layouts import Case, read_dataset
from h2aseg.data.validate import InputChecks, find_problems, require_valid
from h2aseg.errors import error_line
from h2aseg.inference.predictor import (
    CaseResult,
    Grid,
    Predictor,
    TtaSetting,
    case_id_from_path,
    check_output_dir,
)

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = ("seg.nii.gz", "lesions.csv", "summary.json", "mip.png")
"""The files of a case, ``{case}_{suffix}`` (plus ``prob.nii.gz`` with probabilities)."""
TEMPORARY_PATTERNS = (".tmp-*", ".h2aseg-dicom-*")
"""Names of the temporary files and folders a prediction leaves when it is killed."""


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be segmented: its id, and the one-line reason (file named)."""

    case_id: str
    reason: str


class CasesFailed(ValueError):
    """Some cases of a dataset failed (the others were written).

    Attributes:
        failures: the failed cases.
        results: the cases written or already complete.
    """

    def __init__(self, failures: Sequence[CaseFailure], results: Sequence[CaseResult], out_dir: Path) -> None:
        self.failures = list(failures)
        self.results = list(results)
        total, written = len(failures) + len(results), len(results)
        super().__init__(f"{len(failures)} of {total} case(s) failed (table above); {written} in {out_dir}")

    def rich_table(self) -> Table:
        """The failures as a table (case, reason)."""
        table = Table(title="Failed cases")
        table.add_column("case")
        table.add_column("reason", overflow="fold")
        for failure in self.failures:
            table.add_row(failure.case_id, failure.reason)
        return table


def predict(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    ct: str | Path | None = None,
    pet: str | Path | None = None,
    dataset: str | Path | None = None,
    ct_dicom: str | Path | None = None,
    pet_dicom: str | Path | None = None,
    grid: Grid = "pet",
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    tta: TtaSetting = None,
    save_probabilities: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    allow_non_suv: bool = False,
    min_ct_coverage: float = MIN_CT_COVERAGE,
    allow_different_frames: bool = False,
) -> list[CaseResult]:
    """Segment one NIfTI pair, every case of a dataset folder, or one DICOM study.

    Exactly one input: ``ct`` + ``pet`` (NIfTI, HU and SUV), ``dataset`` (a folder in any layout
    :func:`h2aseg.data.layouts.read_dataset` knows; labels not needed), or ``ct_dicom`` +
    ``pet_dicom`` (series folders, converted to NIfTI with SUV in a hidden folder inside
    ``out_dir``, removed afterwards). The checkpoint is loaded and every case validated (readable,
    finite, CT in HU, PET in SUV, CT covering the PET) before the first window.

    Args:
        model_path: checkpoint (see :meth:`Predictor.from_checkpoint`).
        out_dir: output folder (created; must not be a file).
        grid, save_probabilities: as in :meth:`Predictor.predict_case`.
        overlap, sw_batch_size, tta, device: as in :class:`Predictor` (``None`` = the config's).
        overwrite: redo cases whose files are all in ``out_dir`` (else they are skipped).
        allow_non_suv: accept PET whose range is not SUV (other tracers).
        min_ct_coverage: least fraction of the PET body extent the CT covers per axis (0 = any).
        allow_different_frames: DICOM: accept CT and PET of different patients or frames of reference.

    Returns:
        One :class:`CaseResult` per case, in input order (skipped cases read back from their files).

    Raises:
        ValueError: bad options, checkpoint or input (one pair or DICOM: nothing is written).
        CasesFailed: a dataset run where some cases failed; the others were written.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    given = {
        "--ct/--pet": (ct, pet),
        "--dataset": (dataset,),
        "--ct-dicom/--pet-dicom": (ct_dicom, pet_dicom),
    }
    chosen = [name for name, values in given.items() if any(value is not None for value in values)]
    if len(chosen) != 1:
        raise ValueError("give exactly one input: --ct with --pet, --dataset, or --ct-dicom with --pet-dicom")
    if any(value is None for value in given[chosen[0]]):
        raise ValueError(f"{chosen[0]}: both of the pair are needed")
    checks = InputChecks(allow_non_suv=allow_non_suv, min_ct_coverage=min_ct_coverage)
    predictor = Predictor.from_checkpoint(
        model_path, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta
    )
    remove_temporaries(out_dir)
    if dataset is not None:
        cases = [
            Case(case.case_id, case.patient_id, case.ct, case.pet) for case in read_dataset(Path(dataset))
        ]
        return _predict_dataset(predictor, cases, out_dir, checks, grid, save_probabilities, overwrite)
    if ct is not None and pet is not None:
        case = Case(case_id_from_path(Path(pet)), "", Path(ct), Path(pet))
        require_valid([case], checks)
        return [predictor.predict_case(case.ct, case.pet, out_dir, case.case_id, grid, save_probabilities)]
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".h2aseg-dicom-", dir=out_dir))
    try:
        converted = convert_dicom(
            Path(ct_dicom),
            Path(pet_dicom),
            scratch,
            allow_different_frames=allow_different_frames,
            min_ct_coverage=min_ct_coverage,
        )
        case = Case(case_id_from_path(Path(pet_dicom)), "", converted["ct"], converted["pet_suv"])
        require_valid([case], checks)
        return [predictor.predict_case(case.ct, case.pet, out_dir, case.case_id, grid, save_probabilities)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()


def _predict_dataset(
    predictor: Predictor,
    cases: Sequence[Case],
    out_dir: Path,
    checks: InputChecks,
    grid: Grid,
    save_probabilities: bool,
    overwrite: bool,
) -> list[CaseResult]:
    """Every case of a dataset: invalid and failing cases are collected, complete ones skipped."""
    failures = [
        CaseFailure(case_id, str(problems[0])) for case_id, problems in find_problems(cases, checks).items()
    ]
    failed = {failure.case_id for failure in failures}
    results = []
    todo = []
    for case in cases:
        if case.case_id in failed:
            continue
        done = not overwrite and case_complete(out_dir, case.case_id, save_probabilities)
        try:
            results += [read_case_result(out_dir, case.case_id, save_probabilities)] if done else []
        except ValueError:  # a damaged summary: the case is done again
            done = False
        if not done:
            todo.append(case)
    if len(todo) < len(cases) - len(failed):
        logger.info(
            "%d case(s) already complete in %s: skipped", len(cases) - len(failed) - len(todo), out_dir
        )
    for case in track(todo, description="segmenting", disable=len(todo) < 2):
        try:
            results.append(
                predictor.predict_case(case.ct, case.pet, out_dir, case.case_id, grid, save_probabilities)
            )
        except Exception as error:  # one bad case must not cost the others
            logger.error("%s: %s", case.case_id, error_line(error))
            failures.append(CaseFailure(case.case_id, error_line(error)))
    order = {case.case_id: index for index, case in enumerate(cases)}
    results.sort(key=lambda result: order[result.case_id])
    if failures:
        failures.sort(key=lambda failure: order[failure.case_id])
        raise CasesFailed(failures, results, out_dir)
    return results


def case_paths(out_dir: Path, case_id: str, save_probabilities: bool) -> dict[str, Path]:
    """``{suffix: out_dir/{case}_{suffix}}`` of the files of a case."""
    suffixes = OUTPUT_SUFFIXES + (("prob.nii.gz",) if save_probabilities else ())
    return {suffix: out_dir / f"{case_id}_{suffix}" for suffix in suffixes}


def case_complete(out_dir: Path, case_id: str, save_probabilities: bool) -> bool:
    """All files of the case are in ``out_dir`` (each appears only once complete)."""
    return all(path.is_file() for path in case_paths(out_dir, case_id, save_probabilities).values())


def read_case_result(out_dir: Path, case_id: str, save_probabilities: bool) -> CaseResult:
    """The :class:`CaseResult` of a complete case, its summary read from ``{case}_summary.json``."""
    paths = case_paths(out_dir, case_id, save_probabilities)
    try:
        stored = json.loads(paths["summary.json"].read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{paths['summary.json']}: unreadable ({error_line(error)})") from error
    summary = {key: value for key, value in stored.items() if not isinstance(value, (list, dict, str))}
    return CaseResult(
        case_id=case_id,
        mask=paths["seg.nii.gz"],
        lesions_csv=paths["lesions.csv"],
        summary_json=paths["summary.json"],
        figure=paths["mip.png"],
        probabilities=paths.get("prob.nii.gz"),
        summary=summary,
    )


def remove_temporaries(out_dir: Path) -> None:
    """Remove the temporary files and folders (:data:`TEMPORARY_PATTERNS`) a killed run left in
    ``out_dir``. Two predictions must not write into one folder at the same time."""
    if not out_dir.is_dir():
        return
    for pattern in TEMPORARY_PATTERNS:
        for path in out_dir.glob(pattern):
            logger.info("removing %s (left by an interrupted run)", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
