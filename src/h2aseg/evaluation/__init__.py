"""Evaluation: per-case metrics (``metrics``), lesion quantification (``quantify``) and folder
evaluation (``evaluate``)."""

from h2aseg.evaluation.evaluate import evaluate_folder, format_summary_table

__all__ = ["evaluate_folder", "format_summary_table"]
