"""Prediction: checkpoints (``checkpoint``), volume to probabilities with sliding window and TTA
(``predictor``), and the written outputs in the original geometry (``export``).

The lesion quantification names are re-exported from ``h2aseg.evaluation.quantify`` where they live.
"""

from h2aseg.evaluation.quantify import Lesion, case_summary, lesion_table, write_lesion_report
from h2aseg.inference.export import CaseResult
from h2aseg.inference.predictor import Predictor

__all__ = [
    "CaseResult",
    "Lesion",
    "Predictor",
    "case_summary",
    "lesion_table",
    "write_lesion_report",
]
