"""Evaluate a folder of predicted masks against ground truth: per-case CSV, summary JSON, Markdown table.

Ground truth is either a dataset that :func:`h2aseg.data.layouts.read_dataset` recognises (its labels are
used) or a flat folder of masks ``{case}.nii.gz`` / ``{case}_seg.nii.gz`` / ``{case}_label.nii.gz``.
The prediction of a case is ``{case}_seg.nii.gz`` (what ``h2aseg predict`` writes) or ``{case}.nii.gz``.
Each foreground class is scored on its own (``labels == k``); with several classes (HECKTOR: 1 = GTVp,
2 = GTVn) the summary also holds their macro mean, the HECKTOR 2022 ranking figure for aggregated Dice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
from rich.progress import track

from h2aseg.evaluation.masks import check_classes, foreground_labels, load_label_map, load_label_pair
from h2aseg.evaluation.metrics import CaseMetrics, aggregated_dice_of_cases, compute_class_metrics
from h2aseg.io import NIFTI_SUFFIXES, atomic_output

__all__ = [
    "evaluate_folder",
    "find_truth_masks",
    "format_summary_table",
    "select_classes",
    "summarize_cases",
    "summarize_classes",
]

logger = logging.getLogger(__name__)

TRUTH_MASK_TAGS = ("_seg", "_label", "")
IMAGE_TAGS = ("_ct", "_pet", "_prob", "_0000", "_0001")
PREDICTION_TAGS = ("_seg", "")
METRIC_KEYS = ("dice", "hd95", "precision", "recall", "fpv_ml", "fnv_ml", "dice_agg")

SummaryStat = dict[str, float | int | None]
ClassResults = dict[int, CaseMetrics]


def evaluate_folder(
    pred_dir: Path,
    gt_dir: Path,
    out_dir: Path | None = None,
    *,
    classes: Mapping[int, str] | None = None,
    labels: Sequence[int | str] | None = None,
    resample_to_truth: bool = False,
) -> dict:
    """Metrics of every ground-truth case against its prediction, class by class.

    Dice, HD95, recall and FNV are averaged over the cases where the class is in the truth, precision
    over cases where it is predicted, FPV over all cases (see :func:`summarize_cases`).

    Args:
        pred_dir: folder of predicted masks ``{case}_seg.nii.gz`` or ``{case}.nii.gz``.
        gt_dir: a dataset folder in a layout ``read_dataset`` knows, or a folder of masks.
        out_dir: if given, ``per_case.csv`` and ``summary.json`` are written there (atomically).
        classes: label → name of the run (``config["classes"]``, background included or not); by default
            the foreground labels found in the truth masks (named ``lesion`` when only 1, else ``label{k}``).
        labels: the classes to score, as labels or names (default: every foreground class).
        resample_to_truth: resample predictions on another grid onto the truth grid (nearest neighbour)
            instead of refusing them.

    Returns:
        The summary (see :func:`summarize_classes`).

    Raises:
        ValueError: no ground truth found, a truth case has no prediction, a mask holds values that are
            not its classes, or a pair lies on different grids (the message names the files).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not pred_dir.is_dir():
        raise ValueError(f"{pred_dir}: prediction folder not found")
    truths = find_truth_masks(gt_dir)
    pairs = {case_id: (_find_prediction(pred_dir, case_id), truth) for case_id, truth in truths.items()}
    names = _class_names(classes, truths.values())
    selected = select_classes(names, labels)
    results: list[tuple[str, ClassResults]] = []
    for case_id in track(sorted(pairs), description="evaluating", transient=True):
        pred_path, truth_path = pairs[case_id]
        pred, truth, spacing_mm = load_label_pair(pred_path, truth_path, resample_to_truth)
        check_classes(truth, truth_path, names)
        check_classes(pred, pred_path, names)
        results.append((case_id, compute_class_metrics(pred, truth, spacing_mm, selected)))
    summary = summarize_classes([per_class for _, per_class in results], {k: names[k] for k in selected})
    logger.info("evaluated %d cases, classes %s", len(results), ", ".join(names[k] for k in selected))
    if out_dir is not None:
        _write_outputs(Path(out_dir), results, {k: names[k] for k in selected}, summary)
    return summary


def select_classes(names: Mapping[int, str], labels: Sequence[int | str] | None) -> list[int]:
    """The labels to score: every class of ``names`` by default, else ``labels`` (numbers or names).

    Raises:
        ValueError: an entry of ``labels`` is neither a label nor a name of ``names``.
    """
    if not labels:
        return sorted(names)
    by_name = {name.lower(): label for label, name in names.items()}
    selected: list[int] = []
    for entry in labels:
        text = str(entry).strip()
        label = int(text) if text.lstrip("-").isdigit() else by_name.get(text.lower())
        if label not in names:
            known = ", ".join(f"{k} ({names[k]})" for k in sorted(names))
            raise ValueError(f"labels: {entry!r} is not a class; the classes are {known}")
        if label not in selected:
            selected.append(label)
    return selected


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


def summarize_cases(cases: Sequence[CaseMetrics]) -> dict[str, SummaryStat]:
    """Mean, standard deviation (population, ddof 0) and count of each metric of one class.

    ``dice``, ``hd95``, ``recall``, ``fnv_ml``: cases with the class in the truth; ``precision``: cases
    with a predicted voxel of it; ``fpv_ml``: all cases; ``dice_agg``: the HECKTOR aggregated Dice of
    all cases (volumes in mm³), ``std`` ``None``, ``n`` the number of cases. ``mean`` and ``std`` are
    ``None`` when no case qualifies (for ``dice_agg``: when every mask is empty).
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
    dice_agg = aggregated_dice_of_cases(cases)
    summary["dice_agg"] = {"mean": None if math.isnan(dice_agg) else dice_agg, "std": None, "n": len(cases)}
    return summary


def summarize_classes(results: Sequence[Mapping[int, CaseMetrics]], names: Mapping[int, str]) -> dict:
    """Per-class summaries and their macro mean.

    Args:
        results: per case, the metrics of each class (by label).
        names: label → name of the scored classes, in output order.

    Returns:
        ``{"classes": {name: {"label": k, metric: stat, ...}}, "n_cases": N, metric: stat, ...}``, metrics
        as in :func:`summarize_cases`. The top-level stats are the class's own with one class, else the
        macro mean over classes: ``{"mean": mean of the class means, "std": None, "n": classes}``, the
        mean ``None`` when a class has none (HECKTOR 2022 ranks by the macro mean of ``dice_agg``).
    """
    blocks = {
        name: {"label": label, **summarize_cases([case[label] for case in results])}
        for label, name in names.items()
    }
    summary: dict = {"classes": blocks, "n_cases": len(results)}
    if len(blocks) == 1:
        (only,) = blocks.values()
        summary.update({key: only[key] for key in METRIC_KEYS})
        return summary
    for key in METRIC_KEYS:
        means = [block[key]["mean"] for block in blocks.values()]
        mean = None if None in means else float(np.mean(means))
        summary[key] = {"mean": mean, "std": None, "n": len(means)}
    return summary


def format_summary_table(summary: Mapping, method: str = "") -> str:
    """Markdown table in the layout of the paper's Table 1 (mean ± std), one row per class and, with
    several classes, a row of their macro mean; FPV, FNV, aggregated Dice and the case counts too.
    Dice, aggregated Dice, precision and recall in percent."""
    columns = [
        ("Dice (%)", "dice", 100.0),
        ("HD95 (mm)", "hd95", 1.0),
        ("Precision (%)", "precision", 100.0),
        ("Recall (%)", "recall", 100.0),
        ("FPV (mL)", "fpv_ml", 1.0),
        ("FNV (mL)", "fnv_ml", 1.0),
        ("Agg. Dice (%)", "dice_agg", 100.0),
    ]
    header = ["Method", "Class", *(title for title, _, _ in columns), "Cases (with lesion)"]
    rows = [header, ["---"] * len(header)]
    for name, block in summary["classes"].items():
        cells = [_format_cell(block[key], scale) for _, key, scale in columns]
        counts = f"{summary['n_cases']} ({block['dice']['n']})"
        rows.append([method or "prediction", f"{name} ({block['label']})", *cells, counts])
    if len(summary["classes"]) > 1:
        cells = [_format_cell(summary[key], scale) for _, key, scale in columns]
        rows.append([method or "prediction", "mean of classes", *cells, str(summary["n_cases"])])
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


def _class_names(classes: Mapping[int, str] | None, truth_paths: Iterable[Path]) -> dict[int, str]:
    """Foreground label → name: from ``classes`` when given, else the labels found in the truth masks."""
    if classes is not None:
        names = {int(label): str(name) for label, name in classes.items() if int(label) != 0}
        if not names:
            raise ValueError(f"classes {dict(classes)} has no foreground class")
        return names
    found: set[int] = set()
    for path in truth_paths:
        found.update(foreground_labels(load_label_map(path)[0]))
    if found <= {1}:
        return {1: "lesion"}
    return {label: f"label{label}" for label in sorted(found)}


def _write_outputs(
    out_dir: Path, results: Sequence[tuple[str, ClassResults]], names: Mapping[int, str], summary: dict
) -> None:
    """``per_case.csv`` (a column group ``{class}_{metric}`` per class) and ``summary.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = [field.name for field in fields(CaseMetrics)]
    writer.writerow(["case_id", *(f"{name}_{column}" for name in names.values() for column in columns)])
    for case_id, per_class in results:
        values = (value for label in names for value in per_class[label].as_dict().values())
        writer.writerow([case_id, *values])
    with atomic_output(out_dir / "per_case.csv") as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    with atomic_output(out_dir / "summary.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote %s and %s", out_dir / "per_case.csv", out_dir / "summary.json")
