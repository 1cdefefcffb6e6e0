"""Body-weight SUV factor of PET DICOM images (g/mL per unit of rescaled pixel value).

Follows the QIBA/UW-PET vendor-neutral pseudo-code: Units BQML decay-corrected to the scan start
(START) or to the injection (ADMIN), Philips CNTS with the private SUV scale, GML already SUV.
Every image it cannot convert honestly is refused with a :class:`DicomSuvError` naming the tag
and the file. Dates are trusted only when they agree with the times of day, because
de-identification often shifts them tag by tag (see ``docs/data.md``, "DICOM and SUV").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from pydicom.dataset import Dataset

logger = logging.getLogger(__name__)

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PHILIPS_PET_CREATOR = "Philips PET Private Group"
GE_PET_CREATOR = "GEMS_PETD_01"
CLOCK_SKEW_S = 300.0
"""Injection and scanner clocks may disagree by minutes: a start this much after the scan is skew."""
MAX_UPTAKE_HALF_LIVES = 10.0
"""A decay time longer than this many half-lives (< 0.1 % left) means contradictory times."""
DAY_S = 86400.0
SUV_SERIES_TAGS = ("Units", "DecayCorrection", "CorrectedImage", "PatientWeight", "SeriesDate", "SeriesTime")
SUV_RADIOPHARMACEUTICAL_TAGS = (
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
    "RadiopharmaceuticalStartTime",
    "RadiopharmaceuticalStartDateTime",
)


class DicomSuvError(ValueError):
    """A PET image whose pixel values cannot be converted to body-weight SUV."""


@dataclass(frozen=True)
class SuvCalibration:
    """How a PET image's values become body-weight SUV: ``SUV = factor * (pixel * slope + intercept)``.

    Attributes:
        factor: the multiplier (g/Bq for BQML; dimensionless 1.0 for GML).
        method: "BQML decay-corrected", "BQML decay-corrected to injection (ADMIN)",
            "Philips CNTS private SUV scale", "Philips CNTS activity-concentration scale" or
            "already SUV (GML)".
        decay_time_s: seconds from injection to the decay-correction reference time, if used.
        scan_time_source: the tag that gave the reference (scan) time, if used.
        start_time_source: the tag that gave the injection time, if used.
    """

    factor: float
    method: str
    decay_time_s: float | None = None
    scan_time_source: str | None = None
    start_time_source: str | None = None


def text_value(ds: Dataset, keyword: str) -> str:
    """A tag's value as stripped text; empty when absent."""
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _tm_seconds(text: str) -> float | None:
    """DICOM TM ``HHMMSS.FFFFFF`` (or the old ``HH:MM:SS``) to seconds after midnight; None if unreadable."""
    digits = text.strip().replace(":", "")
    try:
        hours, minutes, seconds = int(digits[0:2]), int(digits[2:4] or 0), float(digits[4:] or 0)
    except ValueError:
        return None
    if hours > 23 or minutes > 59 or seconds >= 61:
        return None
    return hours * 3600.0 + minutes * 60.0 + seconds


def _da(text: str) -> date | None:
    """DICOM DA ``YYYYMMDD`` to a date; None if absent or invalid (such as ``00000000``)."""
    digits = text.strip().replace(".", "")
    try:
        return date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def _dt(text: str) -> tuple[date | None, float | None]:
    """DICOM DT ``YYYYMMDDHHMMSS.FFFFFF[&ZZXX]`` to (date, seconds after midnight); the offset is ignored."""
    stripped = text.strip().split("+")[0].split("-")[0]
    return _da(stripped[:8]), (_tm_seconds(stripped[8:]) if len(stripped) > 8 else None)


def _wrapped(seconds: float) -> float:
    """A difference of times of day folded into (-12 h, 12 h]."""
    return seconds - DAY_S * math.ceil((seconds - DAY_S / 2) / DAY_S)


def _private_float(ds: Dataset, group: int, creator: str, offset: int) -> float | None:
    """A numeric private element, decoded from raw bytes where the VR was unknown; None if absent."""
    try:
        value = ds.get_private_item(group, offset, creator).value
    except KeyError:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="ignore").strip("\x00 ")
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _positive(ds: Dataset, keyword: str, source: str) -> float:
    try:
        value = float(ds.get(keyword) or 0.0)
    except (TypeError, ValueError):
        value = 0.0
    if not value > 0:
        raise DicomSuvError(f"{source}: {keyword} is missing or not positive ({ds.get(keyword)!r})")
    return value


def _check_pet_image(ds: Dataset, source: str) -> None:
    """Refuse screenshots, other modalities and MIPs; a header without SOP class is judged on its tags."""
    file_meta = getattr(ds, "file_meta", None)
    sop_class = text_value(ds, "SOPClassUID") or (
        text_value(file_meta, "MediaStorageSOPClassUID") if file_meta else ""
    )
    if sop_class == SECONDARY_CAPTURE_STORAGE:
        raise DicomSuvError(f"{source}: a Secondary Capture image (a screenshot), not PET Image Storage")
    if sop_class and sop_class != PET_IMAGE_STORAGE:
        raise DicomSuvError(f"{source}: SOPClassUID {sop_class} is not PET Image Storage")
    if text_value(ds, "Modality") not in ("", "PT"):
        raise DicomSuvError(f"{source}: Modality {text_value(ds, 'Modality')} is not PT")
    image_type = "\\".join(str(value).upper() for value in ds.get("ImageType") or [])
    if "MIP" in image_type:
        raise DicomSuvError(f"{source}: ImageType {image_type} is a projection (MIP), not a slice")


def _check_corrections(ds: Dataset, source: str) -> str:
    corrections = {str(value).upper() for value in ds.get("CorrectedImage") or []}
    missing = {"ATTN", "DECY"} - corrections
    if corrections and missing:
        lacking = ", ".join(sorted(missing))
        raise DicomSuvError(f"{source}: CorrectedImage lacks {lacking}: SUV would be wrong")
    decay_correction = text_value(ds, "DecayCorrection").upper()
    if decay_correction not in ("START", "ADMIN"):
        raise DicomSuvError(
            f"{source}: DecayCorrection is {decay_correction or 'missing'}, SUV needs START or ADMIN"
        )
    return decay_correction


def _scan_time(ds: Dataset, source: str, earliest_acquisition: str | None) -> tuple[date | None, float, str]:
    """The decay-correction reference of DecayCorrection START, chosen as QIBA does.

    SeriesTime unless the series was created after its acquisition (post-processed); then the
    GE private scan time, else the earliest AcquisitionTime of the series.
    """
    series_s = _tm_seconds(text_value(ds, "SeriesTime"))
    if series_s is None:
        raise DicomSuvError(
            f"{source}: SeriesTime is missing or unreadable ({text_value(ds, 'SeriesTime')!r})"
        )
    acquisition_s = _tm_seconds(earliest_acquisition or text_value(ds, "AcquisitionTime"))
    if acquisition_s is None or _wrapped(acquisition_s - series_s) >= 0:
        return _da(text_value(ds, "SeriesDate")), series_s, "SeriesTime"
    try:
        ge_date, ge_s = _dt(str(ds.get_private_item(0x0009, 0x0D, GE_PET_CREATOR).value))
    except KeyError:
        ge_date, ge_s = None, None
    if ge_s is not None:
        return ge_date, ge_s, "GE private scan time (0009,100D)"
    return _da(text_value(ds, "AcquisitionDate")), acquisition_s, "AcquisitionTime (earliest of the series)"


def _decay_time(
    ds: Dataset, drug: Dataset, half_life_s: float, source: str, earliest_acquisition: str | None
) -> tuple[float, str, str]:
    """Seconds from injection to the scan reference time, and the tags used for each end."""
    scan_date, scan_s, scan_source = _scan_time(ds, source, earliest_acquisition)
    longest_s = MAX_UPTAKE_HALF_LIVES * half_life_s
    start_date, start_s = _dt(text_value(drug, "RadiopharmaceuticalStartDateTime"))
    if start_s is not None and start_date is not None and scan_date is not None:
        full_s = (scan_date - start_date).days * DAY_S + scan_s - start_s
        if -CLOCK_SKEW_S <= full_s <= longest_s:
            return full_s, scan_source, "RadiopharmaceuticalStartDateTime"
        logger.warning(
            "%s: RadiopharmaceuticalStartDateTime date disagrees with the scan date (%.1f h apart); "
            "using the time of day only",
            source,
            full_s / 3600,
        )
    start_source = "RadiopharmaceuticalStartDateTime (time of day)"
    if start_s is None:
        start_s = _tm_seconds(text_value(drug, "RadiopharmaceuticalStartTime"))
        start_source = "RadiopharmaceuticalStartTime"
    if start_s is None:
        raise DicomSuvError(f"{source}: RadiopharmaceuticalStartTime and StartDateTime missing or unreadable")
    decay_s = (scan_s - start_s) % DAY_S
    if decay_s > DAY_S - CLOCK_SKEW_S:
        decay_s -= DAY_S
    if decay_s > longest_s:
        raise DicomSuvError(
            f"{source}: {start_source} is {decay_s / 3600:.1f} h before {scan_source} "
            f"(> {MAX_UPTAKE_HALF_LIVES:g} half-lives): the times contradict each other"
        )
    if decay_s < 0:
        logger.warning("%s: injection %.0f s after %s; clock skew assumed", source, -decay_s, scan_source)
    return decay_s, scan_source, start_source


def _bqml_calibration(
    ds: Dataset, source: str, decay_correction: str, earliest_acquisition: str | None
) -> SuvCalibration:
    weight_kg = _positive(ds, "PatientWeight", source)
    drugs = ds.get("RadiopharmaceuticalInformationSequence") or []
    if not drugs:
        raise DicomSuvError(f"{source}: RadiopharmaceuticalInformationSequence is missing")
    dose_bq = _positive(drugs[0], "RadionuclideTotalDose", source)
    half_life_s = _positive(drugs[0], "RadionuclideHalfLife", source)
    if decay_correction == "ADMIN":
        return SuvCalibration(weight_kg * 1000.0 / dose_bq, "BQML decay-corrected to injection (ADMIN)", 0.0)
    decay_s, scan_source, start_source = _decay_time(ds, drugs[0], half_life_s, source, earliest_acquisition)
    decayed_dose_bq = dose_bq * 2.0 ** (-decay_s / half_life_s)
    return SuvCalibration(
        weight_kg * 1000.0 / decayed_dose_bq, "BQML decay-corrected", decay_s, scan_source, start_source
    )


def suv_calibration(
    ds: Dataset, path: str | Path | None = None, *, earliest_acquisition_time: str | None = None
) -> SuvCalibration:
    """The body-weight SUV factor of one PET image and how it was obtained.

    Args:
        ds: the image's header (pixel data not needed).
        path: its file, named in error messages.
        earliest_acquisition_time: the earliest AcquisitionTime of its series (TM text), used when
            the SeriesTime is after the acquisition; defaults to the image's own AcquisitionTime.

    Returns:
        The calibration; ``SUV = factor * (pixel * RescaleSlope + RescaleIntercept)``.

    Raises:
        DicomSuvError: a screenshot, MIP, unquantitative unit (PROPCPS, CNTS without the Philips
            scale), missing decay/attenuation correction, or missing or contradictory weight,
            dose, half-life or times.
    """
    source = str(path) if path is not None else "PET image"
    _check_pet_image(ds, source)
    units = text_value(ds, "Units").upper()
    if units == "GML":
        return SuvCalibration(1.0, "already SUV (GML)")
    if units not in ("BQML", "CNTS"):
        raise DicomSuvError(f"{source}: Units {units or 'missing'} cannot be converted to SUV")
    decay_correction = _check_corrections(ds, source)
    if units == "BQML":
        return _bqml_calibration(ds, source, decay_correction, earliest_acquisition_time)
    suv_scale = _private_float(ds, 0x7053, PHILIPS_PET_CREATOR, 0x00)
    if suv_scale:
        return SuvCalibration(suv_scale, "Philips CNTS private SUV scale")
    activity_scale = _private_float(ds, 0x7053, PHILIPS_PET_CREATOR, 0x09)
    if not activity_scale:
        raise DicomSuvError(
            f"{source}: Units CNTS without a non-zero Philips SUV scale factor (7053,1000) "
            "or activity concentration scale factor (7053,1009)"
        )
    bqml = _bqml_calibration(ds, source, decay_correction, earliest_acquisition_time)
    method = "Philips CNTS activity-concentration scale"
    return replace(bqml, factor=bqml.factor * activity_scale, method=method)


def suv_factor(ds: Dataset, path: str | Path | None = None) -> float:
    """The body-weight SUV factor of one PET image: ``SUV = factor * (pixel * slope + intercept)``.

    See :func:`suv_calibration` for the rules and the errors.
    """
    return suv_calibration(ds, path).factor


def _suv_tag_values(ds: Dataset) -> dict[str, str]:
    drugs = ds.get("RadiopharmaceuticalInformationSequence") or [Dataset()]
    values = {keyword: str(ds.get(keyword)) for keyword in SUV_SERIES_TAGS}
    values |= {keyword: str(drugs[0].get(keyword)) for keyword in SUV_RADIOPHARMACEUTICAL_TAGS}
    values["Philips SUV scale (7053,1000)"] = str(_private_float(ds, 0x7053, PHILIPS_PET_CREATOR, 0x00))
    values["Philips activity scale (7053,1009)"] = str(_private_float(ds, 0x7053, PHILIPS_PET_CREATOR, 0x09))
    return values


def series_suv_calibration(datasets: Sequence[Dataset], paths: Sequence[str | Path]) -> SuvCalibration:
    """One SUV calibration for a whole series, after checking every slice agrees on the SUV tags.

    Args:
        datasets: the slice headers, one per file.
        paths: their files (same order), named in error messages.

    Raises:
        DicomSuvError: slices disagree on a tag, or :func:`suv_calibration` refuses the first one.
    """
    first = _suv_tag_values(datasets[0])
    for ds, path in zip(datasets[1:], paths[1:], strict=True):
        for keyword, value in _suv_tag_values(ds).items():
            if value != first[keyword]:
                raise DicomSuvError(f"{path}: {keyword} {value} contradicts {first[keyword]} in {paths[0]}")
    series_s = _tm_seconds(text_value(datasets[0], "SeriesTime")) or 0.0
    times = {text_value(ds, "AcquisitionTime") for ds in datasets}
    offsets = {text: _tm_seconds(text) for text in times}
    readable = [
        (_wrapped(seconds - series_s), text) for text, seconds in offsets.items() if seconds is not None
    ]
    earliest = min(readable)[1] if readable else None
    return suv_calibration(datasets[0], paths[0], earliest_acquisition_time=earliest)
