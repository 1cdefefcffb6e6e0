"""A predicted mask as a DICOM Segmentation object (highdicom), on the source series' own frames.

The mask (a NIfTI label volume in RAS mm) is sampled at the centre of every pixel of every
source slice, nearest neighbour, through the two geometries: DICOM's Image Position / Orientation
(Patient) and Pixel Spacing (LPS mm) and the NIfTI affine (RAS mm). So the SEG's frames are the
source's frames, whatever the slice order or orientation of either side; when the mask was written
on the source's grid the sampling is exact. Each foreground class becomes one segment (number =
label, name from the run's ``classes``), SNOMED-CT category "Morphologically abnormal structure",
type "Neoplasm", algorithm type AUTOMATIC. Every source frame gets a SEG frame, empty ones
included, so the SEG is a regular volume for viewers (and highdicom's ``get_volume``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from h2aseg import __version__
from h2aseg.data.dicom.series import CT_IMAGE_STORAGE, _series_files, _sorted_slices
from h2aseg.data.dicom.suv import PET_IMAGE_STORAGE
from h2aseg.io import atomic_output

logger = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
SERIES_NUMBER = 901
SOURCE_KINDS = (("PT", PET_IMAGE_STORAGE), ("CT", CT_IMAGE_STORAGE))


def read_source_series(folder: Path) -> list[Dataset]:
    """The slice headers of the one PET or CT series under ``folder``, ordered along the normal."""
    if not Path(folder).is_dir():
        raise ValueError(f"{folder}: not a folder")
    for modality, sop_class in SOURCE_KINDS:
        try:
            files = _series_files(Path(folder), modality, sop_class, None)
        except ValueError as error:
            if "several" in str(error):
                raise
            continue  # no series of this kind: try the next
        return [ds for _, ds in _sorted_slices(files, Path(folder))]
    raise ValueError(f"{folder}: no PET or CT image series to reference")


def labels_on_series(labels: np.ndarray, affine: np.ndarray, slices: list[Dataset]) -> np.ndarray:
    """Nearest-neighbour sample of a label volume at every pixel centre of a DICOM series.

    Args:
        labels: ``(I, J, K)`` integer labels in NIfTI voxel order.
        affine: the ``(4, 4)`` NIfTI affine (voxel index → RAS mm).
        slices: the source series' datasets, one per frame.

    Returns:
        ``(frames, rows, columns)`` labels, frame ``f`` = ``slices[f]``; 0 outside the volume.
    """
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    frames = np.zeros((len(slices), int(slices[0].Rows), int(slices[0].Columns)), dtype=labels.dtype)
    rows, columns = np.meshgrid(np.arange(frames.shape[1]), np.arange(frames.shape[2]), indexing="ij")
    for index, ds in enumerate(slices):
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        row_spacing, column_spacing = (float(value) for value in ds.PixelSpacing)
        # Column index c moves along the first direction cosine, row index r along the second.
        lps = (
            np.asarray(ds.ImagePositionPatient, dtype=np.float64)
            + columns[..., None] * column_spacing * orientation[:3]
            + rows[..., None] * row_spacing * orientation[3:]
        )
        voxel = np.rint(nib.affines.apply_affine(to_voxel, lps @ LPS_TO_RAS.T)).astype(np.int64)
        inside = np.all((voxel >= 0) & (voxel < np.asarray(labels.shape)), axis=-1)
        frames[index][inside] = labels[tuple(voxel[inside].T)]
    return frames


def write_dicom_seg(
    mask_path: Path, source_dicom: Path, out: Path, classes: Mapping[int, str] | None = None
) -> Path:
    """Write the NIfTI mask ``mask_path`` as a DICOM SEG referencing the series in ``source_dicom``.

    Args:
        mask_path: uint8 label NIfTI (0 background), e.g. ``{case}_seg.nii.gz``.
        source_dicom: folder of the PET (or CT) series the SEG refers to and takes its frames from.
        out: the ``.dcm`` file to write (under a temporary name, then renamed).
        classes: label → name (the run's ``classes``); default ``{1: "lesion"}``.

    Raises:
        ValueError: unreadable inputs, labels without a class, or a mask outside the series.
    """
    names = {int(label): str(name) for label, name in (classes or {0: "background", 1: "lesion"}).items()}
    foreground = sorted(label for label in names if label != 0)
    if foreground != list(range(1, len(foreground) + 1)):
        raise ValueError(f"classes must number the foreground 1..N for DICOM SEG segments, got {names}")
    image = nib.load(mask_path)
    labels = np.asarray(image.dataobj).astype(np.uint8)
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *foreground})
    if unknown:
        raise ValueError(f"{mask_path}: labels {unknown} have no class name")
    slices = read_source_series(source_dicom)
    frames = labels_on_series(labels, image.affine, slices)
    if labels.any() and not frames.any():
        raise ValueError(f"{mask_path}: the mask lies outside the series in {source_dicom} (another study?)")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="h2aseg", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=label,
            segment_label=names[label],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for label in foreground
    ]
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="h2aseg",
        manufacturer_model_name="h2aseg",
        software_versions=__version__,
        device_serial_number="none",
        series_description="h2aseg lesion segmentation",
        omit_empty_frames=False,
    )
    with atomic_output(out) as temporary:
        seg.save_as(temporary)
    logger.info("%s: DICOM SEG with %d segment(s) on %d source frames", out, len(segments), len(slices))
    return out
