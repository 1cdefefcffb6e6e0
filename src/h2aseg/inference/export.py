"""Export of one predicted case: geometry restore, NIfTI masks, lesion reports and the picture.

The output files are described in ``docs/outputs.md``; all files of a case appear together or not
at all (each is written under a temporary name and renamed once every one is written).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch

from h2aseg.data.restore import restore_to_original
from h2aseg.evaluation.quantify import case_summary, lesion_table, write_lesion_report
from h2aseg.io import atomic_output, first_line, overlap_problem, save_nifti_like
from h2aseg.models.registry import OutputActivation
from h2aseg.viz import save_nifti_case_figure

logger = logging.getLogger(__name__)

Grid = Literal["pet", "ct"]


@dataclass(frozen=True)
class CaseResult:
    """What :meth:`h2aseg.inference.predictor.Predictor.predict_case` wrote for one case.

    Attributes:
        case_id: the case identifier (prefix of every file).
        mask: ``{case}_seg.nii.gz``, uint8 labels on the original PET (or CT) grid.
        lesions_csv: ``{case}_lesions.csv``, one row per lesion.
        summary_json: ``{case}_summary.json``, case totals and the lesions.
        figure: ``{case}_mip.png``, PET MIPs and CT slice with the outlines.
        probabilities: ``{case}_prob.nii.gz`` (float32) when requested, else ``None``.
        summary: the case totals (see :func:`h2aseg.evaluation.quantify.case_summary`).
    """

    case_id: str
    mask: Path
    lesions_csv: Path
    summary_json: Path
    figure: Path
    probabilities: Path | None
    summary: dict[str, float | int | None]

    @classmethod
    def from_paths(
        cls, case_id: str, paths: Mapping[str, Path], summary: dict[str, float | int | None]
    ) -> CaseResult:
        """The result of a case from its files by suffix (``"seg.nii.gz"``, ``"lesions.csv"``, ...)."""
        return cls(
            case_id=case_id,
            mask=paths["seg.nii.gz"],
            lesions_csv=paths["lesions.csv"],
            summary_json=paths["summary.json"],
            figure=paths["mip.png"],
            probabilities=paths.get("prob.nii.gz"),
            summary=summary,
        )


def export_case(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    data: Mapping[str, Any],
    images: tuple[nib.Nifti1Image, nib.Nifti1Image],
    out_dir: Path,
    case_id: str,
    activation: OutputActivation,
    grid: Grid = "pet",
    save_probabilities: bool = False,
    classes: Mapping[int, str] | None = None,
) -> CaseResult:
    """Write the files of one case from its prediction on the preprocessed grid.

    Args:
        probabilities: ``(C, X, Y, Z)`` class probabilities on the preprocessed grid.
        labels: ``(X, Y, Z)`` uint8 labels on the preprocessed grid.
        data: the case dict of the prediction transforms (carries the original geometry).
        images: ``(pet_image, ct_image)`` as returned by :func:`check_case_inputs`.
        out_dir: output folder (created).
        case_id: prefix of the output files.
        activation: the model's output activation (softmax: channel 0 is background).
        grid: ``"pet"`` or ``"ct"``: the grid of the written mask and probabilities.
        save_probabilities: also write ``{case}_prob.nii.gz``.
        classes: label → name of the run's classes, for the per-class totals of the report (see
            :func:`h2aseg.evaluation.quantify.case_summary`); ``None``: the classes found.
    """
    pet_image, ct_image = images
    pet_labels, _ = restore_to_original(labels, data, grid="pet", mode="nearest")
    grid_image = pet_image if grid == "pet" else ct_image
    grid_labels = pet_labels if grid == "pet" else restore_to_original(labels, data, grid="ct")[0]
    pet_suv = np.asarray(pet_image.dataobj, dtype=np.float32)
    lesions = lesion_table(pet_labels, pet_suv, pet_image.affine)
    summary = case_summary(lesions, classes)

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out_dir / f"{case_id}_{name}"
        for name in ("seg.nii.gz", "lesions.csv", "summary.json", "mip.png")
        + (("prob.nii.gz",) if save_probabilities else ())
    }
    with ExitStack() as stack:
        staged = {name: stack.enter_context(atomic_output(path)) for name, path in paths.items()}
        save_nifti_like(grid_labels.astype(np.uint8), grid_image, staged["seg.nii.gz"])
        write_lesion_report(lesions, staged["lesions.csv"], staged["summary.json"], case_id, classes)
        numbers = [(lesion.lesion_id, lesion.centroid_mm) for lesion in lesions]
        save_nifti_case_figure(
            pet_image, pet_labels, ct_image, staged["mip.png"], title=case_id, lesions=numbers
        )
        if save_probabilities:
            foreground = probabilities[1:] if activation == "softmax" else probabilities
            restored, _ = restore_to_original(foreground, data, grid=grid, mode="linear")
            volume = restored[0] if len(restored) == 1 else np.moveaxis(restored, 0, -1)
            save_nifti_like(volume.astype(np.float32), grid_image, staged["prob.nii.gz"])
    logger.info("%s: %d lesion(s), MTV %.1f mL", case_id, summary["lesion_count"], summary["total_mtv_ml"])
    return CaseResult.from_paths(case_id, paths, summary)


def check_output_dir(out_dir: Path) -> None:
    """A ``ValueError`` when ``out_dir`` exists and is not a folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: the output folder is a file")


def check_case_inputs(ct: Path, pet: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Check that CT and PET are readable 3-D NIfTI files that overlap in space
    (:func:`h2aseg.io.overlap_problem`, the rule ``check-data`` applies too).

    Returns:
        ``(pet_image, ct_image)`` (headers loaded, data lazy).
    """
    images = {}
    for name, path in (("PET", pet), ("CT", ct)):
        if not path.is_file():
            raise ValueError(f"{path}: no such {name} file")
        try:
            image = nib.load(path)
        except Exception as error:  # nibabel raises ImageFileError, OSError, EOFError...
            raise ValueError(f"{path}: not a readable NIfTI {name} image ({first_line(error)})") from error
        if len(image.shape) != 3:
            raise ValueError(f"{path}: the {name} must be a 3-D volume, got shape {image.shape}")
        images[name] = image
    problem = overlap_problem(images["CT"], images["PET"])
    if problem is not None:
        raise ValueError(f"{ct} and {pet}: {problem}; different studies or broken affines?")
    return images["PET"], images["CT"]
