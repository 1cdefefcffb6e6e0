"""Evaluate a folder of predicted masks against ground truth: per-case CSV, summary JSON, Markdown table.

Ground truth is either a dataset that :func:`h2aseg.data.layouts.read_dataset` recognises (its labels are
used) or a flat folder of masks ``{case}.nii.gz`` / ``{case}_seg.nii.gz`` / ``{case}_label.nii.gz``.
The prediction of a case is ``{case}_seg.nii.gz`` (what ``h2aseg predict`` writes) or ``{case}.nii.gz``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.progress import track

from h2aseg.evaluation.metrics import CaseMetrics, aggregated_dice_of_cases, compute_case_metrics
from h2aseg.io import NIFTI_SUFFIXES, atomic_output

__all__ = ["evaluate_folder", "find_truth_masks", "format_summary_table", "summarize_cases"]

logger = logging.getLogger(__name__)

TRUTH_MASK_TAGS = ("_seg", "_label", "")
IMAGE_TAGS = ("_ct", "_pet", "_prob", "_0000", "_0001")
PREDICTION_TAGS = ("_seg", "")
AFFINE_TOLERANCE_MM = 1e-3

SummaryStat = dict[str, float | int | None]
Summary = dict[str, SummaryStat]


def evaluate_folder(pred_dir: Path, gt_dir: Path, out_dir: Path | None = None) -> Summary:
    """Metrics of every ground-truth case against its prediction.

    Labels are binarised (``> 0``); prediction and truth must share shape and affine. Dice and HD95 are
    averaged over cases with a lesion (as in the paper), precision over cases with a predicted voxel,
    recall and FNV over cases with a lesion, FPV over all cases (see :func:`summarize_cases`).

    Args:
        pred_dir: folder of predicted masks ``{case}_seg.nii.gz`` or ``{case}.nii.gz``.
        gt_dir: a dataset folder in a layout ``read_dataset`` knows, or a folder of masks.
        out_dir: if given, ``per_case.csv`` and ``summary.json`` are written there (atomically).

    Returns:
        The summary: keys ``dice``, ``hd95``, ``precision``, ``recall``, ``fpv_ml``, ``fnv_ml``,
        ``dice_agg``, each ``{"mean", "std", "n"}`` (fractions for Dice/precision/recall, mm, mL;
        ``None`` where no case qualifies).

    Raises:
        ValueError: no ground truth found, a truth case has no prediction, or a pair of files differs
            in shape or affine (the message names the files).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: prediction folder not found")
    truths = find_truth_masks(gt_dir)
    pairs = {case_id: (_find_prediction(pred_dir, case_id), truth) for case_id, truth in truths.items()}
    results: list[tuple[str, CaseMetrics]] = []
    for case_id in track(sorted(pairs), description="evaluating", transient=True):
        pred_path, truth_path = pairs[case_id]
        pred_mask, truth_mask, spacing_mm = load_mask_pair(pred_path, truth_path)
        results.append((case_id, compute_case_metrics(pred_mask, truth_mask, spacing_mm)))
    summary = summarize_cases([metrics for _, metrics in results])
    logger.info("evaluated %d cases (%d with lesions)", len(results), summary["dice"]["n"])
    if out_dir is not None:
        _write_outputs(Path(out_dir), results, summary)
    return summary


def find_truth_masks(gt_dir: Path) -> dict[str, Path]:
    """Ground-truth mask of every case in ``gt_dir``, by case id.

    A dataset layout known to ``h2aseg.data.layouts.read_dataset`` comes first (cases without a label
    are skipped); otherwise ``gt_dir`` is read as a flat folder of masks.

    Raises:
        ValueError: ``gt_dir`` is missing, holds no mask, or two files claim the same case.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise ValueError(f"{gt_dir}: ground-truth folder not found")
    dataset_masks, reason = _dataset_masks(gt_dir)
    if dataset_masks:
        return dataset_masks
    masks: dict[str, Path] = {}
    for path in sorted(gt_dir.iterdir()):
        case_id = _case_id(path.name, TRUTH_MASK_TAGS)
        if case_id is None or case_id.endswith(IMAGE_TAGS) or not path.is_file():
            continue
        if case_id in masks:
            first = masks[case_id].name
            raise ValueError(f"{gt_dir}: two masks for case {case_id!r}, {first} and {path.name}")
        masks[case_id] = path
    if not masks:
        raise ValueError(
            f"{gt_dir}: no ground truth found, neither a dataset with labels ({reason}) nor masks named "
            "{case}.nii.gz, {case}_seg.nii.gz or {case}_label.nii.gz"
        )
    return masks


def load_mask_pair(pred_path: Path, truth_path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Load two masks as boolean ``(X, Y, Z)`` arrays (``> 0``) and the truth's spacing in mm.

    Raises:
        ValueError: a file is not a 3-D image, or the two differ in shape or affine.
    """
    pred_image, truth_image = _load_nifti(pred_path), _load_nifti(truth_path)
    pred_mask, truth_mask = _mask_array(pred_image, pred_path), _mask_array(truth_image, truth_path)
    if pred_mask.shape != truth_mask.shape:
        raise ValueError(
            f"{pred_path} has shape {pred_mask.shape} but {truth_path} has shape {truth_mask.shape}"
        )
    if not np.allclose(pred_image.affine, truth_image.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        raise ValueError(
            f"{pred_path} and {truth_path} have different affines (grids), "
            f"max difference {np.abs(pred_image.affine - truth_image.affine).max():.4g} mm"
        )
    spacing_mm = tuple(float(s) for s in truth_image.header.get_zooms()[:3])
    return pred_mask, truth_mask, spacing_mm


def summarize_cases(cases: Sequence[CaseMetrics]) -> Summary:
    """Mean, standard deviation (population, ddof 0) and count of each metric over the cases it applies to.

    ``dice``, ``hd95``, ``recall``, ``fnv_ml``: cases with a lesion (``hd95`` also needs a prediction, it
    is NaN otherwise); ``precision``: cases with a predicted voxel; ``fpv_ml``: all cases;
    ``dice_agg``: the aggregated Dice of all cases, ``std`` ``None``, ``n`` the number of cases.
    ``mean`` and ``std`` are ``None`` when no case qualifies.
    """
    positive = [case for case in cases if case.has_lesion]
    summary = {
        "dice": _stat([case.dice for case in positive]),
        "hd95": _stat([case.hd95_mm for case in positive]),
        "precision": _stat([case.precision for case in cases]),
        "recall": _stat([case.recall for case in positive]),
        "fpv_ml": _stat([case.fpv_ml for case in cases]),
        "fnv_ml": _stat([case.fnv_ml for case in positive]),
    }
    dice_agg = aggregated_dice_of_cases(cases) if cases else None
    summary["dice_agg"] = {"mean": dice_agg, "std": None, "n": len(cases)}
    return summary


def format_summary_table(summary: Mapping[str, Mapping[str, float | int | None]], method: str = "") -> str:
    """One-row Markdown table in the layout of the paper's Table 1 (mean ± std), plus FPV, FNV, aggregated
    Dice and the case counts; Dice, aggregated Dice, precision and recall in percent."""
    columns = [
        ("Dice (%)", "dice", 100.0),
        ("HD95 (mm)", "hd95", 1.0),
        ("Precision (%)", "precision", 100.0),
        ("Recall (%)", "recall", 100.0),
        ("FPV (mL)", "fpv_ml", 1.0),
        ("FNV (mL)", "fnv_ml", 1.0),
        ("Agg. Dice (%)", "dice_agg", 100.0),
    ]
    cells = [_format_cell(summary[key], scale) for _, key, scale in columns]
    header = ["Method", *(title for title, _, _ in columns), "Cases (with lesion)"]
    counts = f"{summary['dice_agg']['n']} ({summary['dice']['n']})"
    rows = [header, ["---"] * len(header), [method or "prediction", *cells, counts]]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _format_cell(stat: Mapping[str, float | int | None], scale: float) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None:
        return "n/a"
    return f"{mean * scale:.2f}" if std is None else f"{mean * scale:.2f} ± {std * scale:.2f}"


def _stat(values: Sequence[float]) -> SummaryStat:
    defined = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if defined.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(defined.mean()), "std": float(defined.std()), "n": int(defined.size)}


def _dataset_masks(gt_dir: Path) -> tuple[dict[str, Path], str]:
    """Labels of a dataset layout, or ``({}, why not)``; the layouts module is imported lazily."""
    try:
        from h2aseg.data.layouts import read_dataset
    except ImportError as error:
        return {}, f"dataset reader unavailable: {error}"
    try:
        cases = read_dataset(gt_dir)
    except ValueError as error:
        return {}, str(error)
    masks = {case.case_id: Path(case.label) for case in cases if case.label is not None}
    return masks, "" if masks else "the dataset has no labels"


def _case_id(file_name: str, tags: Sequence[str]) -> str | None:
    """Case id of ``{case}{tag}.nii[.gz]`` for the first matching tag, else ``None``."""
    for suffix in NIFTI_SUFFIXES:
        if file_name.endswith(suffix):
            stem = file_name[: -len(suffix)]
            tag = next(tag for tag in tags if stem.endswith(tag))
            return stem[: len(stem) - len(tag)] or None
    return None


def _find_prediction(pred_dir: Path, case_id: str) -> Path:
    for tag in PREDICTION_TAGS:
        for suffix in NIFTI_SUFFIXES:
            path = pred_dir / f"{case_id}{tag}{suffix}"
            if path.is_file():
                return path
    raise ValueError(f"{pred_dir}: no prediction for case {case_id!r} (expected {case_id}_seg.nii.gz)")


def _load_nifti(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as error:
        raise ValueError(f"{path}: not a readable NIfTI image ({error})") from error


def _mask_array(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: a mask must be a 3-D image, got shape {data.shape}")
    return data > 0


def _write_outputs(out_dir: Path, results: Sequence[tuple[str, CaseMetrics]], summary: Summary) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *(field.name for field in fields(CaseMetrics))])
    for case_id, metrics in results:
        writer.writerow([case_id, *metrics.as_dict().values()])
    with atomic_output(out_dir / "per_case.csv") as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    with atomic_output(out_dir / "summary.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and %s", out_dir / "per_case.csv", out_dir / "summary.json")
