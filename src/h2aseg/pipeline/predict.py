"""``predict``: the library function behind ``h2aseg predict``: choose the input (NIfTI pair, dataset
folder or DICOM study), convert DICOM, name the cases, and segment them with a checkpoint."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.progress import track

from h2aseg.data.dicom.series import convert_dicom
from h2aseg.data.layouts import read_dataset
from h2aseg.inference.export import CaseResult, Grid, check_case_inputs, check_output_dir
from h2aseg.inference.predictor import Predictor, TtaSetting
from h2aseg.io import strip_nifti_suffix
from h2aseg.pipeline.sharding import Rank, barrier, write_cohort_summary

_GENERIC_NAMES = {"pet", "suv", "pet_suv", "pt", "ct", "image", "images", "dicom", "nifti"}

INPUTS = {"NIfTI pair": ("ct", "pet"), "dataset": ("dataset",), "DICOM pair": ("ct_dicom", "pet_dicom")}
"""The three kinds of input of :func:`predict`, by the names of its arguments."""


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
) -> list[CaseResult]:
    """Segment one NIfTI pair, every case of a dataset folder, or one DICOM study.

    Exactly one input: ``ct`` + ``pet`` (NIfTI, HU and SUV), ``dataset`` (a folder in any layout
    :func:`h2aseg.data.layouts.read_dataset` knows; labels not needed), or ``ct_dicom`` +
    ``pet_dicom`` (series folders, converted to NIfTI with SUV in a temporary folder first).
    Every input is checked before the first case runs. Under ``torchrun`` (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK`` set) each rank segments every ``WORLD_SIZE``-th case on its own
    GPU; for a dataset, rank 0 then writes ``cohort_summary.csv`` (one row per case) once all
    ranks are done (see :mod:`h2aseg.pipeline.sharding`).

    Args:
        model_path: checkpoint (see :meth:`Predictor.from_checkpoint`).
        out_dir: output folder (created; must not be a file).
        grid, save_probabilities: as in :meth:`Predictor.predict_case`.
        overlap, sw_batch_size, tta, device: as in :class:`Predictor` (``None`` = the config's).

    Returns:
        One :class:`CaseResult` per case of this rank, in input order.

    Raises:
        ValueError: not exactly one input, half a pair, or a bad file; the message names the
            arguments of this function.
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
    rank = Rank.from_env()
    predictor = Predictor.from_checkpoint(
        model_path, rank.device(device), overlap=overlap, sw_batch_size=sw_batch_size, tta=tta
    )
    with tempfile.TemporaryDirectory(prefix="h2aseg-dicom-") as scratch:
        if dataset is not None:
            cases = [(case.case_id, case.ct, case.pet) for case in read_dataset(Path(dataset))]
        elif ct is not None and pet is not None:
            cases = [(case_id_from_path(Path(pet)), Path(ct), Path(pet))]
        else:
            converted = convert_dicom(Path(ct_dicom), Path(pet_dicom), Path(scratch))
            cases = [(case_id_from_path(Path(pet_dicom)), converted["ct"], converted["pet_suv"])]
        for _, case_ct, case_pet in cases:
            check_case_inputs(case_ct, case_pet)
        mine = rank.share(cases)
        results = [
            predictor.predict_case(case_ct, case_pet, out_dir, case_id, grid, save_probabilities)
            for case_id, case_ct, case_pet in track(mine, description="segmenting", disable=len(mine) < 2)
        ]
    if dataset is not None:
        barrier(rank)
        if rank.rank == 0:
            write_cohort_summary(out_dir, [case_id for case_id, _, _ in cases])
    return results


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
