"""``predict``: the library function behind ``h2aseg predict``: choose the input (NIfTI pair, dataset
folder or DICOM study), convert DICOM, name the cases, validate them, segment them with a checkpoint,
an exported network or an ensemble, and write the DICOM SEGs and ``report.html``.

Every case is validated (:mod:`h2aseg.data.validate`) before the first window. A dataset run goes
on past a bad case and reports the failures at the end; a case whose files are all there is
skipped (``overwrite`` redoes it), so a run that was killed finishes on the next call. Temporary
files of killed runs are removed at the start; DICOM is converted inside the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.progress import track
from rich.table import Table

from h2aseg.data.check import MIN_CT_COVERAGE
from h2aseg.data.dicom.series import convert_dicom
from h2aseg.data.layouts import Case, read_dataset
from h2aseg.data.validate import InputChecks, find_problems, require_valid
from h2aseg.errors import error_line
from h2aseg.inference.ensemble import load_ensemble
from h2aseg.inference.export import CaseResult, Grid, check_output_dir
from h2aseg.inference.predictor import Predictor, TtaSetting
from h2aseg.io import remove_stale_temporaries, strip_nifti_suffix
from h2aseg.pipeline.sharding import Rank, barrier, write_cohort_summary
from h2aseg.report import write_report

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = ("seg.nii.gz", "lesions.csv", "summary.json", "mip.png")
"""The files of a case, ``{case}_{suffix}`` (plus ``prob.nii.gz`` with probabilities)."""
TEMPORARY_PREFIXES = (".tmp-", ".h2aseg-dicom-")
"""Temporary files and folders (``{prefix}{pid}-...``) a prediction leaves when it is killed."""
INPUTS = {"NIfTI pair": ("ct", "pet"), "dataset": ("dataset",), "DICOM pair": ("ct_dicom", "pet_dicom")}
"""The three kinds of input of :func:`predict`, by the names of its arguments."""
_GENERIC_NAMES = {"pet", "suv", "pet_suv", "pt", "ct", "image", "images", "dicom", "nifti"}


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
    model_path: str | Path | Sequence[str | Path],
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
    dicom_seg: bool = False,
    source_dicom: str | Path | None = None,
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
    finite, CT in HU, PET in SUV, CT covering the PET) before the first window. Under ``torchrun``
    (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) each rank segments every ``WORLD_SIZE``-th case
    of a dataset on its own GPU; rank 0 then writes ``cohort_summary.csv`` (one row per case
    written) once all ranks are done (see :mod:`h2aseg.pipeline.sharding`).

    Args:
        model_path: checkpoint (see :meth:`Predictor.from_checkpoint`) or exported ``.onnx`` /
            ``.pt`` file (:mod:`h2aseg.inference.serving`); several: their ensemble (mean
            probabilities, :mod:`h2aseg.inference.ensemble`).
        out_dir: output folder (created; must not be a file).
        grid, save_probabilities: as in :meth:`Predictor.predict_case`.
        overlap, sw_batch_size, tta, device: as in :class:`Predictor` (``None`` = the config's).
        dicom_seg: also write ``{case}_seg.dcm``, a DICOM SEG referencing the source series: the
            PET series (the CT's with ``grid="ct"``) of DICOM input, else ``source_dicom``.
        source_dicom: the DICOM series folder a NIfTI input came from (for ``dicom_seg``).
        overwrite: redo cases whose files are all in ``out_dir`` (else they are skipped).
        allow_non_suv: accept PET whose range is not SUV (other tracers).
        min_ct_coverage: least fraction of the PET body extent the CT covers per axis (0 = any).
        allow_different_frames: DICOM: accept CT and PET of different patients or frames of reference.

    Returns:
        One :class:`CaseResult` per case of this rank, in input order (skipped cases read back from
        their files); ``report.html`` in ``out_dir`` shows them all (:func:`h2aseg.report.write_report`;
        also written, for the cases that succeeded, when some of a dataset fail; ``report_rank{N}.html``
        per rank under ``torchrun``).

    Raises:
        ValueError: not exactly one input or half a pair (the arguments of this function named), a
            bad checkpoint, or a bad input (one pair or DICOM: nothing is written).
        CasesFailed: a dataset run where some cases failed; the others were written.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    given = {"ct": ct, "pet": pet, "dataset": dataset, "ct_dicom": ct_dicom, "pet_dicom": pet_dicom}
    chosen = [kind for kind, names in INPUTS.items() if any(given[name] is not None for name in names)]
    if len(chosen) != 1:
        raise ValueError("give exactly one input: ct with pet, dataset, or ct_dicom with pet_dicom")
    missing = [name for name in INPUTS[chosen[0]] if given[name] is None]
    if missing:
        raise ValueError(
            f"{chosen[0]}: {' and '.join(INPUTS[chosen[0]])} are both needed ({missing[0]} missing)"
        )
    checks = InputChecks(allow_non_suv=allow_non_suv, min_ct_coverage=min_ct_coverage)
    if dicom_seg:
        source_dicom = source_dicom or (ct_dicom if grid == "ct" else pet_dicom)
        if source_dicom is None or dataset is not None:
            raise ValueError("dicom_seg needs ct_dicom with pet_dicom, or source_dicom with ct and pet")
        try:
            from h2aseg.inference.dicom_seg import read_source_series, write_dicom_seg
        except ImportError as error:
            raise ValueError(
                f"dicom_seg needs highdicom: pip install 'h2aseg[dicom-seg]' ({error})"
            ) from error
        read_source_series(Path(source_dicom))  # a bad source folder fails before the prediction
    rank = Rank.from_env()
    paths = [model_path] if isinstance(model_path, (str, Path)) else list(model_path)
    predictor = load_ensemble(
        paths, rank.device(device), overlap=overlap, sw_batch_size=sw_batch_size, tta=tta
    )
    report = out_dir / ("report.html" if rank.world_size == 1 else f"report_rank{rank.rank}.html")
    for path in remove_stale_temporaries(out_dir, TEMPORARY_PREFIXES):
        logger.info("removed %s (left by an interrupted run)", path)
    if dataset is not None:
        cases = [
            Case(case.case_id, case.patient_id, case.ct, case.pet) for case in read_dataset(Path(dataset))
        ]
        try:
            mine = rank.share(cases)
            results = _predict_dataset(predictor, mine, out_dir, checks, grid, save_probabilities, overwrite)
        except CasesFailed as failed:
            write_report(report, failed.results, predictor.config, paths)
            raise
        finally:  # every rank reaches the barrier, failed cases or not
            barrier(rank)
            if rank.rank == 0:
                write_cohort_summary(out_dir, [case.case_id for case in cases])
    elif ct is not None and pet is not None:
        case = Case(case_id_from_path(Path(pet)), "", Path(ct), Path(pet))
        require_valid([case], checks)
        results = [predictor.predict_case(case.ct, case.pet, out_dir, case.case_id, grid, save_probabilities)]
    else:
        created = not out_dir.exists()
        out_dir.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".h2aseg-dicom-{os.getpid()}-", dir=out_dir))
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
            results = [
                predictor.predict_case(case.ct, case.pet, out_dir, case.case_id, grid, save_probabilities)
            ]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if created and not any(out_dir.iterdir()):
                out_dir.rmdir()
    if dicom_seg:
        for result in results:
            out = out_dir / f"{result.case_id}_seg.dcm"
            write_dicom_seg(result.mask, Path(source_dicom), out, predictor.config.get("classes"))
    write_report(report, results, predictor.config, paths)
    return results


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
    return CaseResult.from_paths(case_id, paths, summary)


def case_id_from_path(path: Path) -> str:
    """Case id of a lone PET file or DICOM folder.

    The name without ``.nii[.gz]`` and a ``_pet``/``_suv``/``_0001`` suffix; when that leaves a
    generic name (``SUV.nii.gz``, ``PET/dicom/``), the nearest parent folder with a specific name.
    """
    stem = strip_nifti_suffix(path.name) or path.name
    for suffix in ("_pet_suv", "_pet", "_suv", "_0001"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    folders = [parent.name for parent in path.resolve().parents if parent.name]
    return next((name for name in (stem, *folders) if name.lower() not in _GENERIC_NAMES), stem)
