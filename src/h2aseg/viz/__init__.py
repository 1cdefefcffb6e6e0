"""Pictures: PET maximum-intensity projections with lesion outlines (:mod:`h2aseg.viz.figures`) and
training curves (:mod:`h2aseg.viz.curves`); their public names are importable from here."""

from __future__ import annotations

from h2aseg.viz.curves import save_training_curves
from h2aseg.viz.figures import (
    MARKER_COLOUR,
    MAX_NUMBERED_LESIONS,
    PREDICTION_COLOUR,
    SOFT_TISSUE_WINDOW_HU,
    TRUTH_COLOUR,
    save_case_figure,
    save_nifti_case_figure,
)

__all__ = [
    "MARKER_COLOUR",
    "MAX_NUMBERED_LESIONS",
    "PREDICTION_COLOUR",
    "SOFT_TISSUE_WINDOW_HU",
    "TRUTH_COLOUR",
    "save_case_figure",
    "save_nifti_case_figure",
    "save_training_curves",
]
