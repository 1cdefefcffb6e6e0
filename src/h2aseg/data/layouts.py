"""PET/CT dataset layouts on disk: AutoPET, HECKTOR, nnU-Net v2 raw and a flat folder.

- ``autopet``: ``PATIENT/STUDY/{CTres,SUV,SEG}.nii.gz``; patient id ``PATIENT``, case id
  ``PATIENT_STUDY`` (several studies per patient).
- ``hecktor``: ``imagesTr/{ID}__CT``, ``imagesTr/{ID}__PT``, ``labelsTr/{ID}`` (CT and PET on
  their own grids, label on the CT grid, 1 = GTVp, 2 = GTVn); patient and case id ``ID``, the
  centre included (``CHUM-001``).
- ``nnunet``: ``dataset.json``, ``imagesTr/{case}_0000`` (CT), ``imagesTr/{case}_0001`` (PET),
  ``labelsTr/{case}``; patient id from an optional ``patients`` map (case → patient) in
  dataset.json, else the case id.
- ``flat``: ``{case}_ct``, ``{case}_pet``, ``{case}_seg`` in one folder; patient id = case id.

Files end in ``.nii.gz`` or ``.nii`` (nnU-Net: its ``file_ending``). :func:`list_case_files` lists
candidate cases with their missing members (for the integrity checker); :func:`read_dataset`
builds on it and raises on the first problem.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from h2aseg.io import NIFTI_SUFFIXES, write_text_atomic

logger = logging.getLogger(__name__)

LAYOUTS = ("autopet", "hecktor", "nnunet", "flat")
_AUTOPET_FILES = {"ct": "CTres", "pet": "SUV", "label": "SEG"}
_FLAT_SUFFIXES = {"ct": "_ct", "pet": "_pet", "label": "_seg"}
_CT_NAMES = {"ct", "ctres"}
_PET_NAMES = {"pet", "pt", "suv", "fdg-pet"}


@dataclass(frozen=True)
class Case:
    """One PET/CT study: CT in HU, PET in SUV and an optional lesion mask (NIfTI paths)."""

    case_id: str
    patient_id: str
    ct: Path
    pet: Path
    label: Path | None = None

    def as_dict(self) -> dict[str, str]:
        """``{"case_id", "patient_id", "ct", "pet", "label"?}`` with string paths (MONAI input)."""
        item = {
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "ct": str(self.ct),
            "pet": str(self.pet),
        }
        if self.label is not None:
            item["label"] = str(self.label)
        return item


@dataclass(frozen=True)
class CaseFiles:
    """A candidate case whose members may be missing.

    ``ct``, ``pet`` and ``label`` are the paths found, or where the file was expected;
    ``missing`` names the members (``"ct"``, ``"pet"``, ``"label"``) that are not on disk.
    """

    case_id: str
    patient_id: str
    ct: Path
    pet: Path
    label: Path
    missing: frozenset[str]


def _strip_nifti(name: str) -> str | None:
    """File name without its NIfTI suffix, ``None`` if it is not a NIfTI file."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _find(folder: Path, stem: str, ending: str | None = None) -> Path:
    """``folder/stem`` + the first NIfTI suffix that exists (or ``ending``/``.nii.gz`` when none)."""
    for suffix in (ending,) if ending else NIFTI_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return folder / f"{stem}{ending or NIFTI_SUFFIXES[0]}"


def _candidate(case_id: str, patient_id: str, ct: Path, pet: Path, label: Path) -> CaseFiles:
    paths = {"ct": ct, "pet": pet, "label": label}
    return CaseFiles(
        case_id, patient_id, ct, pet, label, frozenset(k for k, p in paths.items() if not p.is_file())
    )


def _stems(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(
        stem for p in folder.iterdir() if p.is_file() and (stem := _strip_nifti(p.name)) is not None
    )


def detect_layout(root: Path) -> str:
    """Name of the layout of a dataset folder.

    Raises:
        ValueError: the folder does not exist or matches no layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such dataset folder")
    if (root / "dataset.json").is_file():
        return "nnunet"
    images = _stems(root / "imagesTr")
    if any(stem.endswith(("__CT", "__PT")) for stem in images):
        return "hecktor"
    if any(stem.endswith(("_0000", "_0001")) for stem in images):
        return "nnunet"
    if any(stem.endswith(("_ct", "_pet")) for stem in _stems(root)):
        return "flat"
    for patient in (p for p in root.iterdir() if p.is_dir()):
        for study in (s for s in patient.iterdir() if s.is_dir()):
            if set(_stems(study)) & set(_AUTOPET_FILES.values()):
                return "autopet"
    raise ValueError(f"{root}: not a recognised dataset layout (expected one of {', '.join(LAYOUTS)})")


def _autopet(root: Path) -> list[CaseFiles]:
    cases = []
    for patient in sorted(p for p in root.iterdir() if p.is_dir()):
        for study in sorted(s for s in patient.iterdir() if s.is_dir()):
            if not _stems(study):
                continue
            ct, pet, label = (_find(study, _AUTOPET_FILES[k]) for k in ("ct", "pet", "label"))
            cases.append(_candidate(f"{patient.name}_{study.name}", patient.name, ct, pet, label))
    return cases


def _hecktor(root: Path) -> list[CaseFiles]:
    images, labels = root / "imagesTr", root / "labelsTr"
    ids = sorted({stem.rsplit("__", 1)[0] for stem in _stems(images) if stem.endswith(("__CT", "__PT"))})
    return [
        _candidate(i, i, _find(images, f"{i}__CT"), _find(images, f"{i}__PT"), _find(labels, i)) for i in ids
    ]


def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing (an nnU-Net dataset needs its dataset.json)")
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(description, dict):
        raise ValueError(f"{path}: expected a JSON object")
    channels = description.get("channel_names", description.get("modality"))
    if channels is not None:
        names = [str(channels.get(key, "")).strip().lower() for key in ("0", "1")]
        if len(channels) != 2 or names[0] not in _CT_NAMES or names[1] not in _PET_NAMES:
            raise ValueError(f"{path}: channel 0 must be CT and channel 1 PET, found {dict(channels)}")
    return description


def _nnunet(root: Path) -> list[CaseFiles]:
    description = _read_dataset_json(root)
    ending = str(description.get("file_ending", ".nii.gz"))
    patients = description.get("patients", {})
    images, labels = root / "imagesTr", root / "labelsTr"
    names = sorted(p.name for p in images.iterdir() if p.is_file()) if images.is_dir() else []
    ids = sorted(
        {
            n[: -len(ending) - 5]
            for n in names
            if n.endswith(ending) and n[: -len(ending)][-5:] in ("_0000", "_0001")
        }
    )
    return [
        _candidate(
            i,
            str(patients.get(i, i)),
            _find(images, f"{i}_0000", ending),
            _find(images, f"{i}_0001", ending),
            _find(labels, i, ending),
        )
        for i in ids
    ]


def _flat(root: Path) -> list[CaseFiles]:
    stems = _stems(root)
    ids = sorted({s.rsplit("_", 1)[0] for s in stems if s.endswith(("_ct", "_pet", "_seg"))})
    return [
        _candidate(i, i, *(_find(root, f"{i}{_FLAT_SUFFIXES[k]}") for k in ("ct", "pet", "label")))
        for i in ids
    ]


def list_case_files(root: Path, layout: str = "auto") -> list[CaseFiles]:
    """Candidate cases of a dataset folder, each with the members it lacks (never raises for a
    missing member; see :func:`read_dataset`).

    Args:
        root: dataset folder.
        layout: one of :data:`LAYOUTS` or ``auto``.

    Returns:
        Candidates sorted by case id.

    Raises:
        ValueError: unknown layout, missing folder, or an invalid nnU-Net dataset.json.
    """
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    readers = {"autopet": _autopet, "hecktor": _hecktor, "nnunet": _nnunet, "flat": _flat}
    if layout not in readers:
        raise ValueError(f"{root}: unknown layout {layout!r} (expected auto or one of {', '.join(LAYOUTS)})")
    if not root.is_dir():
        raise ValueError(f"{root}: no such dataset folder")
    return sorted(readers[layout](root), key=lambda c: c.case_id)


def read_dataset(root: Path, layout: str = "auto", require_labels: bool = False) -> list[Case]:
    """The cases of a dataset folder.

    Args:
        root: dataset folder.
        layout: ``autopet``, ``hecktor``, ``nnunet``, ``flat`` or ``auto`` (detected).
        require_labels: raise when a case has no label (otherwise its ``label`` is ``None``).

    Returns:
        Cases sorted by case id.

    Raises:
        ValueError: unrecognisable folder, no case, or a case missing its CT or PET partner (or
            its label with ``require_labels``), naming the expected file.
    """
    root = Path(root)
    candidates = list_case_files(root, layout)
    if not candidates:
        raise ValueError(f"{root}: no cases found")
    cases = []
    for candidate in candidates:
        for member, name in (("ct", "CT"), ("pet", "PET")) + (
            (("label", "label"),) if require_labels else ()
        ):
            if member in candidate.missing:
                path = getattr(candidate, member)
                raise ValueError(f"{path}: missing {name} file of case {candidate.case_id}")
        label = None if "label" in candidate.missing else candidate.label
        cases.append(Case(candidate.case_id, candidate.patient_id, candidate.ct, candidate.pet, label))
    logger.debug("read %d cases from %s", len(cases), root)
    return cases


def case_paths(
    root: Path, layout: str, case_id: str, patient_id: str | None = None, study: str | None = None
) -> tuple[Path, Path, Path]:
    """Where a case's CT, PET and label files go in a layout (``.nii.gz``).

    ``autopet`` needs ``patient_id`` and ``study`` (the folders); the other layouts use ``case_id``.
    """
    root = Path(root)
    if layout == "autopet":
        if patient_id is None or study is None:
            raise ValueError(f"{root}: the autopet layout needs a patient id and a study name")
        folder = root / patient_id / study
        return tuple(folder / f"{_AUTOPET_FILES[k]}.nii.gz" for k in ("ct", "pet", "label"))  # type: ignore[return-value]
    if layout == "hecktor":
        images = root / "imagesTr"
        return (
            images / f"{case_id}__CT.nii.gz",
            images / f"{case_id}__PT.nii.gz",
            root / "labelsTr" / f"{case_id}.nii.gz",
        )
    if layout == "nnunet":
        images = root / "imagesTr"
        return (
            images / f"{case_id}_0000.nii.gz",
            images / f"{case_id}_0001.nii.gz",
            root / "labelsTr" / f"{case_id}.nii.gz",
        )
    if layout == "flat":
        return tuple(root / f"{case_id}{_FLAT_SUFFIXES[k]}.nii.gz" for k in ("ct", "pet", "label"))  # type: ignore[return-value]
    raise ValueError(f"{root}: unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")


def write_nnunet_dataset_json(
    root: Path, case_ids: list[str], labels: dict[str, int], patients: dict[str, str] | None = None
) -> Path:
    """Write an nnU-Net v2 ``dataset.json`` (CT channel 0, PET channel 1), atomically.

    ``patients`` (case id → patient id) is an h2aseg extension that nnU-Net ignores; it keeps
    splits by patient when one patient has several studies.
    """
    description = {
        "name": "h2aseg PET/CT",
        "channel_names": {"0": "CT", "1": "PET"},
        "labels": labels,
        "numTraining": len(case_ids),
        "file_ending": ".nii.gz",
    }
    if patients:
        description["patients"] = patients
    return write_text_atomic(Path(root) / "dataset.json", json.dumps(description, indent=2) + "\n")


def label_mapping(layout: str, target: Literal["binary", "multiclass"]) -> dict[int, int]:
    """Label values on disk → training classes.

    HECKTOR ships 1 = GTVp and 2 = GTVn: ``binary`` merges them into 1 (lesion), ``multiclass``
    keeps them. The other layouts have one lesion class, so only ``binary`` applies.
    """
    if target not in ("binary", "multiclass"):
        raise ValueError(f"unknown target {target!r}: choose binary or multiclass")
    if layout == "hecktor":
        return {0: 0, 1: 1, 2: 1 if target == "binary" else 2}
    if target == "multiclass":
        raise ValueError(f"layout {layout!r} has one lesion class: a multiclass target needs HECKTOR labels")
    return {0: 0, 1: 1}
