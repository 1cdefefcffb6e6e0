"""Prediction (sliding window, TTA, original geometry); the lesion quantification names are
re-exported from ``h2aseg.evaluation.quantify`` where they now live."""

from h2aseg.evaluation.quantify import Lesion, case_summary, lesion_table, write_lesion_report
from h2aseg.inference.predictor import CaseResult, Predictor, predict

__all__ = [
    "CaseResult",
    "Lesion",
    "Predictor",
    "case_summary",
    "lesion_table",
    "predict",
    "write_lesion_report",
]
