"""Prediction (sliding window, TTA, original geometry) and lesion quantification."""

from h2aseg.inference.predictor import CaseResult, Predictor
from h2aseg.inference.quantify import Lesion, case_summary, lesion_table, write_lesion_report

__all__ = [
    "CaseResult",
    "Lesion",
    "Predictor",
    "case_summary",
    "lesion_table",
    "write_lesion_report",
]
