"""Synthetic FDG PET/CT cohort: realistic enough that both modalities matter, fast enough for a CPU.

A case is an analytic body (:mod:`h2aseg.phantom.anatomy`) with CT in HU and PET in body-weight
SUV: fat, muscle, lungs, liver, spleen, kidneys, bowel, bladder, heart, bones and, for
whole-body and head-and-neck presets, brain, tonsils and salivary glands. Organs with
physiological FDG uptake (brain, myocardium, kidneys, bladder, bowel, tonsils) mimic tumours in
the PET alone; lesions (lung, liver, lymph nodes, bone; HECKTOR GTVp/GTVn) differ from them by
their CT appearance and place. The PET is blurred by the scanner resolution with count-dependent
noise and may be shifted by about a voxel against the CT; the mask is the true lesion extent on
the CT grid.

Presets: ``small`` (a shortened trunk at 4 mm for CPU training and tests), ``autopet``
(whole body, CT on the PET grid like AutoPET's CTres) and ``hecktor`` (head and neck, CT 1 mm and
PET 4 mm on different grids, labels 1 = GTVp, 2 = GTVn).

:mod:`h2aseg.phantom.render` renders one case; this module plans and writes cohorts of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from h2aseg.data.layouts import Case, case_paths, read_dataset, write_nnunet_dataset_json
from h2aseg.io import atomic_output
from h2aseg.phantom.render import FWHM_PER_SIGMA as FWHM_PER_SIGMA
from h2aseg.phantom.render import PhantomCase, make_phantom_case
from h2aseg.phantom.render import render_phantom as render_phantom
from h2aseg.phantom.sampling import Preset, PresetName, resolve_preset
from h2aseg.phantom.shapes import resample_to_grid

logger = logging.getLogger(__name__)

LayoutName = Literal["autopet", "nnunet", "hecktor", "flat"]
HECKTOR_CENTRES = ("CHUM", "CHUP", "CHUS", "CHUV", "HGJ", "HMR", "MDA", "USZ")


@dataclass(frozen=True)
class CohortEntry:
    """One case of a cohort: its seeds and its place among the patients' studies."""

    index: int
    case_seed: int
    anatomy_seed: int
    patient_index: int
    study_index: int


def cohort_plan(n_cases: int, seed: int, layout: str) -> list[CohortEntry]:
    """Seeds and patients of a cohort: a child seed per case; in the ``autopet`` and ``nnunet``
    layouts every fourth patient has a second study (same body, new lesions and noise)."""
    children = np.random.SeedSequence(seed).spawn(n_cases)
    case_seeds = [int(child.generate_state(1)[0]) for child in children]
    entries, patient, study, anatomy = [], 0, 0, 0
    for index, case_seed in enumerate(case_seeds):
        anatomy = case_seed if study == 0 else anatomy
        entries.append(CohortEntry(index, case_seed, anatomy, patient, study))
        if layout in ("autopet", "nnunet") and patient % 4 == 3 and study == 0:
            study = 1
        else:
            patient, study = patient + 1, 0
    return entries


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a gzipped NIfTI with the affine as qform and sform, atomically."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        nib.save(image, temporary)


def _names(entry: CohortEntry, layout: str, case: PhantomCase) -> tuple[str, str, str | None]:
    """Case id, patient id and (AutoPET) study folder of a cohort entry."""
    if layout == "autopet":
        rng = np.random.default_rng([entry.anatomy_seed, 4])
        first = date(2002, 1, 1) + timedelta(days=int(rng.integers(0, 5000)))
        when = first + timedelta(days=entry.study_index * int(rng.integers(60, 400)))
        study = f"{when:%m-%d-%Y}-NA-PET-CT-Ganzkoerper-{int(rng.integers(10000, 99999)) + entry.study_index}"
        return f"{case.patient_id}_{study}", case.patient_id, study
    if layout == "hecktor":
        case_id = f"{HECKTOR_CENTRES[entry.index % 8]}-{entry.index // 8 + 1:03d}"
        return case_id, case_id, None
    case_id = f"phantom_{entry.index:03d}"
    return case_id, (f"patient_{entry.patient_index:03d}" if layout == "nnunet" else case_id), None


def write_cohort(
    out_dir: Path,
    n_cases: int,
    seed: int,
    layout: LayoutName = "autopet",
    preset: PresetName | Preset = "small",
) -> list[Case]:
    """Write a synthetic cohort as real NIfTI files (float32 CT/PET, uint8 mask, gzip).

    Layouts: ``autopet`` (``PATIENT/STUDY/{CTres,SUV,SEG}.nii.gz``, every fourth patient with two
    studies), ``hecktor`` (``imagesTr/ID__CT``, ``ID__PT``, ``labelsTr/ID``: native CT and PET
    grids, label on the CT grid), ``nnunet`` (``dataset.json``, ``imagesTr/{case}_0000`` CT,
    ``_0001`` PET, ``labelsTr``; a ``patients`` map in dataset.json) and ``flat``
    (``{case}_ct``, ``_pet``, ``_seg``). Except in ``hecktor``, the CT and mask are written on the
    PET grid.

    Args:
        out_dir: folder to write into (created).
        n_cases: number of studies.
        seed: cohort seed; each case gets a child seed.
        layout: dataset layout.
        preset: ``small``, ``autopet``, ``hecktor`` or a custom :class:`Preset`.

    Returns:
        The written cases, in generation order.
    """
    if n_cases < 1:
        raise ValueError(f"{out_dir}: n_cases must be at least 1, got {n_cases}")
    if layout not in ("autopet", "nnunet", "hecktor", "flat"):
        raise ValueError(f"{out_dir}: unknown layout {layout!r}: choose autopet, nnunet, hecktor or flat")
    preset = resolve_preset(preset)
    out_dir = Path(out_dir)
    _claim_cohort_folder(out_dir, {"seed": seed, "layout": layout, "preset": preset.name})
    cases = []
    for entry in cohort_plan(n_cases, seed, layout):
        phantom = make_phantom_case(entry.case_seed, preset, entry.anatomy_seed)
        case_id, patient_id, study = _names(entry, layout, phantom)
        ct_path, pet_path, label_path = case_paths(out_dir, layout, case_id, patient_id, study)
        if layout == "hecktor":
            ct, mask, ct_affine = phantom.ct_hu, phantom.mask, phantom.ct_affine
        else:
            ct, _, mask = phantom.on_pet_grid()
            ct_affine = phantom.pet_affine
        _save_nifti(ct, ct_affine, ct_path)
        _save_nifti(phantom.pet_suv, phantom.pet_affine, pet_path)
        _save_nifti(mask, ct_affine, label_path)
        cases.append(Case(case_id, patient_id, ct_path, pet_path, label_path))
        logger.debug("wrote %s (%d lesions)", case_id, len(phantom.params.lesions))
    if layout == "nnunet":
        labels = (
            {"background": 0, "GTVp": 1, "GTVn": 2} if preset.multiclass else {"background": 0, "lesion": 1}
        )
        write_nnunet_dataset_json(
            out_dir, [c.case_id for c in cases], labels, {c.case_id: c.patient_id for c in cases}
        )
    logger.info("wrote %d %s phantom cases to %s (%s layout)", n_cases, preset.name, out_dir, layout)
    return cases


COHORT_MARKER = ".h2aseg-phantom.json"
"""Seed, layout and preset of the cohort in a folder, so that another cohort is not mixed into it."""


def _claim_cohort_folder(out_dir: Path, identity: dict[str, object]) -> None:
    """Refuse a folder that holds NIfTI files of another cohort (or not of a phantom); mark it as ours."""
    marker = out_dir / COHORT_MARKER
    if marker.is_file():
        written = json.loads(marker.read_text(encoding="utf-8"))
        differing = [
            f"{key} {written.get(key)!r}, not {value!r}"
            for key, value in identity.items()
            if written.get(key) != value
        ]
        if differing:
            raise ValueError(
                f"{out_dir}: holds another phantom cohort ({', '.join(differing)}); choose another --out"
            )
    elif out_dir.is_dir() and any(out_dir.rglob("*.nii*")):
        raise ValueError(f"{out_dir}: holds NIfTI files of another dataset; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(identity), encoding="utf-8")


def _pet_and_truth(item: Case | PhantomCase) -> tuple[np.ndarray, np.ndarray]:
    """PET (SUV) and binary truth on the PET grid."""
    if isinstance(item, PhantomCase):
        _, pet, mask = item.on_pet_grid()
        return pet, mask > 0
    pet_image = nib.as_closest_canonical(nib.load(item.pet))
    label_image = nib.as_closest_canonical(nib.load(item.label))
    pet = np.asarray(pet_image.dataobj, dtype=np.float32)
    label = np.asarray(label_image.dataobj)
    if label.shape != pet.shape or not np.allclose(label_image.affine, pet_image.affine, atol=1e-3):
        label = resample_to_grid(label, label_image.affine, pet_image.affine, pet.shape, 0, 0)
    return pet, label > 0


def threshold_baseline_dice(
    cases_or_dir: Path | str | Iterable[Case | PhantomCase],
    threshold: float = 2.5,
    reduction: Literal["aggregate", "mean"] = "aggregate",
) -> float:
    """Dice of the PET-only baseline "SUV ≥ threshold is lesion" against the masks.

    Args:
        cases_or_dir: a dataset folder (any layout :func:`read_dataset` knows; labels required),
            or cases (:class:`Case` files or in-memory :class:`PhantomCase`; any iterable, so a
            generator keeps one whole-body case in memory at a time).
        threshold: SUV threshold (g/mL).
        reduction: ``aggregate`` = one Dice over all voxels of all cases (lesion-free cases count
            through their false positives); ``mean`` = mean of per-case Dice over the cases with
            a lesion.

    Returns:
        The Dice in [0, 1] (1.0 when there is neither a lesion nor a positive voxel).
    """
    if isinstance(cases_or_dir, (str, Path)):
        cases_or_dir = read_dataset(Path(cases_or_dir), require_labels=True)
    overlap = predicted = true = 0
    per_case = []
    for item in cases_or_dir:
        pet, truth = _pet_and_truth(item)
        prediction = pet >= threshold
        both, n_pred, n_true = int((prediction & truth).sum()), int(prediction.sum()), int(truth.sum())
        overlap, predicted, true = overlap + both, predicted + n_pred, true + n_true
        if n_true:
            per_case.append(2.0 * both / (n_pred + n_true))
    if reduction == "mean":
        return float(np.mean(per_case)) if per_case else 1.0
    return 2.0 * overlap / (predicted + true) if predicted + true else 1.0


def save_phantom_preview(case: PhantomCase, out_png: Path) -> None:
    """PNG of a case: coronal CT slice through the lesions and coronal PET MIP, the patient's right
    on the left, lesion outlines in red (matplotlib Agg, written atomically)."""
    ct, pet, mask = case.on_pet_grid()
    lesion_y = np.flatnonzero(mask.any(axis=(0, 2)))
    y = int(np.median(lesion_y)) if lesion_y.size else ct.shape[1] // 2
    spacing = case.pet_spacing_mm
    extent = (0.0, ct.shape[0] * spacing[0], 0.0, ct.shape[2] * spacing[2])
    height = 4.5 * extent[3] / extent[1]
    figure = Figure(figsize=(8.0, min(max(height, 3.0), 9.0) + 0.6), dpi=100, layout="constrained")
    panels = (
        (ct[:, y, :], "gray", (-250.0, 350.0), mask[:, y, :], f"CT, coronal slice {y} (HU -250 to 350)"),
        (pet.max(axis=1), "gray_r", (0.0, 10.0), mask.max(axis=1), "PET, coronal MIP (SUV 0 to 10)"),
    )
    for column, (image, cmap, (low, high), outline, title) in enumerate(panels):
        axes = figure.add_subplot(1, 2, column + 1)
        axes.imshow(image.T, cmap=cmap, vmin=low, vmax=high, origin="lower", extent=extent)
        if outline.any():
            axes.contour(
                (outline > 0).T, levels=[0.5], colors="red", linewidths=0.8, origin="lower", extent=extent
            )
        axes.invert_xaxis()  # RAS x grows to the patient's right; radiologists show it on the left
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
    lesions = (
        ", ".join(f"{lesion.site} {lesion.diameter_mm:.0f} mm" for lesion in case.params.lesions) or "none"
    )
    figure.suptitle(f"{case.params.preset.name} phantom {case.patient_id}; lesions: {lesions}", fontsize=9)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_png) as temporary:
        figure.savefig(temporary)
