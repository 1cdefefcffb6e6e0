"""The synthetic PET/CT cohort: anatomy, lesions, sampling, shapes and the cohort writer (``cohort``)."""
