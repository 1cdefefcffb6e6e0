"""Whole pipelines: prediction of pairs, datasets and DICOM studies."""
