"""h2aseg: PET/CT tumour segmentation with H2ASeg."""

__version__ = "0.1.0"
