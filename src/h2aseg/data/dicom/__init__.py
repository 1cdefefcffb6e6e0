"""DICOM input: series to NIfTI (``series``), PET SUV scaling (``suv``), RTSTRUCT masks (``rtstruct``)."""

from h2aseg.data.dicom.series import convert_dicom

__all__ = ["convert_dicom"]
