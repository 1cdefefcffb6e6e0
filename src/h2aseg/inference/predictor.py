"""Whole-volume prediction: sliding window, flip TTA, masks in the original geometry, reports.

Built apart from loading, the nnU-Net way: ``Predictor(model, config)`` for a network in hand,
``Predictor.from_checkpoint(path)`` for a checkpoint in the format of ``docs/internals.md``.
``predict`` is the library function behind ``h2aseg predict``. The output files are described in
``docs/outputs.md``.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from rich.progress import track
from torch import nn

from h2aseg.data.dicom import convert_dicom
from h2aseg.data.layouts import read_dataset
from h2aseg.data.transforms import PreprocessConfig, predict_transforms, restore_to_original
from h2aseg.inference.quantify import atomic_output, case_summary, lesion_table, write_lesion_report
from h2aseg.models import build_model
from h2aseg.viz import save_nifti_case_figure

logger = logging.getLogger(__name__)

Grid = Literal["pet", "ct"]
TtaSetting = bool | Sequence[Sequence[int]] | None
INFERENCE_DEFAULTS = {"sw_batch_size": 2, "overlap": 0.5, "mode": "gaussian", "tta_flips": False}
ALL_FLIPS = tuple(axes for size in (1, 2, 3) for axes in itertools.combinations((0, 1, 2), size))
_GENERIC_NAMES = {"pet", "suv", "pet_suv", "pt", "ct", "image", "images", "dicom", "nifti"}


@dataclass(frozen=True)
class CaseResult:
    """What :meth:`Predictor.predict_case` wrote for one case.

    Attributes:
        case_id: the case identifier (prefix of every file).
        mask: ``{case}_seg.nii.gz``, uint8 labels on the original PET (or CT) grid.
        lesions_csv: ``{case}_lesions.csv``, one row per lesion.
        summary_json: ``{case}_summary.json``, case totals and the lesions.
        figure: ``{case}_mip.png``, PET MIPs and CT slice with the outlines.
        probabilities: ``{case}_prob.nii.gz`` (float32) when requested, else ``None``.
        summary: the case totals (see :func:`h2aseg.inference.quantify.case_summary`).
    """

    case_id: str
    mask: Path
    lesions_csv: Path
    summary_json: Path
    figure: Path
    probabilities: Path | None
    summary: dict[str, float | int | None]


class Predictor:
    """Segments whole PET/CT volumes with a trained network.

    Args:
        model: a network of the registry contract (``out_channels``, ``output_activation``).
        config: the resolved run config (``preprocess`` and optional ``inference`` sections).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
        overlap: sliding-window overlap in [0, 1); ``None`` takes ``config["inference"]``.
        sw_batch_size: windows per forward pass; ``None`` takes the config's.
        tta: flip test-time augmentation: ``True`` averages the identity and all 7 flip
            combinations of the X, Y, Z axes, ``False`` the identity only, a list of axis tuples
            (``[(0,), (0, 1)]``, 0 = X) the identity and those flips; ``None`` takes the config's.

    Example:
        >>> predictor = Predictor.from_checkpoint("runs/demo/checkpoints/best.ckpt")
        >>> result = predictor.predict_case(ct_path, pet_path, Path("out"), "case_001")
    """

    def __init__(
        self,
        model: nn.Module,
        config: Mapping[str, Any],
        device: str | torch.device = "cpu",
        *,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        tta: TtaSetting = None,
    ) -> None:
        inference = {**INFERENCE_DEFAULTS, **dict(config.get("inference") or {})}
        self.preprocess = PreprocessConfig.from_dict(config.get("preprocess"))
        self.roi_size = tuple(int(n) for n in self.preprocess.patch_size)
        self.overlap = float(inference["overlap"] if overlap is None else overlap)
        self.sw_batch_size = int(inference["sw_batch_size"] if sw_batch_size is None else sw_batch_size)
        self.blend_mode = str(inference["mode"])
        self.flips = flip_combinations(inference["tta_flips"] if tta is None else tta)
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must lie in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {self.sw_batch_size}")
        self.activation = getattr(model, "output_activation", None)
        self.out_channels = int(getattr(model, "out_channels", 0))
        if self.activation not in ("softmax", "sigmoid") or self.out_channels < 1:
            raise ValueError("the model needs out_channels >= 1 and output_activation 'softmax' or 'sigmoid'")
        if self.activation == "sigmoid" and self.out_channels != 1:
            raise ValueError(f"a sigmoid model must have one output channel, got {self.out_channels}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.transforms = predict_transforms(self.preprocess)
        self.classes = {
            int(label): str(name) for label, name in (config.get("classes") or {}).items()
        } or None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        *,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        tta: TtaSetting = None,
    ) -> Predictor:
        """Build the model of a checkpoint's config and load its weights.

        Args:
            path: Lightning ``.ckpt`` with ``hyper_parameters.config`` and ``state_dict``
                (network weights under ``model.``).
            device, overlap, sw_batch_size, tta: as in :class:`Predictor`.

        Raises:
            ValueError: missing or unreadable file, no config, or weights of another model.
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such checkpoint file")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch.load raises many types (pickle, zip, EOF, runtime)
            raise ValueError(f"{path}: not a readable checkpoint ({_first_line(error)})") from error
        config = (
            checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
        )
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise ValueError(f"{path}: no resolved config with a 'model' section under hyper_parameters")
        model_config = dict(config["model"])
        name = str(model_config.pop("name", ""))
        try:
            model = build_model(name, **model_config)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: cannot build model {name!r} ({_first_line(error)})") from error
        state_dict = checkpoint.get("state_dict")
        if not isinstance(state_dict, dict):
            raise ValueError(f"{path}: no state_dict")
        weights = {
            key.removeprefix("model."): value for key, value in state_dict.items() if key.startswith("model.")
        }
        _load_weights(model, weights, path, name)
        logger.info("loaded %s (%s) from %s", name, type(model).__name__, path)
        return cls(model, config, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta)

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a preprocessed volume.

        Args:
            image: ``(1, 2, X, Y, Z)`` float (CT, PET as scaled by the preprocessing).

        Returns:
            float32 CPU tensor ``(1, out_channels, X, Y, Z)``: softmax or sigmoid of the
            Gaussian-blended window logits, averaged over the TTA flips.
        """
        if image.ndim != 5 or image.shape[:2] != (1, 2):
            raise ValueError(f"image must be (1, 2, X, Y, Z), got {tuple(image.shape)}")
        image = torch.as_tensor(image).as_subclass(torch.Tensor).to(self.device, torch.float32)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        total = torch.zeros((1, self.out_channels, *image.shape[2:]), device=self.device)
        with torch.inference_mode(), autocast:
            for axes in self.flips:
                dims = [axis + 2 for axis in axes]
                logits = sliding_window_inference(
                    image.flip(dims) if dims else image,
                    roi_size=self.roi_size,
                    sw_batch_size=self.sw_batch_size,
                    predictor=self.model,
                    overlap=self.overlap,
                    mode=self.blend_mode,
                )
                probabilities = self._activate(torch.as_tensor(logits).float())
                total += probabilities.flip(dims) if dims else probabilities
        return (total / len(self.flips)).cpu()

    def _activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1) if self.activation == "softmax" else torch.sigmoid(logits)

    def labels_from(self, probabilities: torch.Tensor) -> torch.Tensor:
        """uint8 labels ``(X, Y, Z)`` from ``(C, X, Y, Z)`` probabilities: argmax, or p >= 0.5."""
        if self.activation == "softmax":
            return probabilities.argmax(dim=0).to(torch.uint8)
        return (probabilities[0] >= 0.5).to(torch.uint8)

    def predict_case(
        self,
        ct: str | Path,
        pet: str | Path,
        out_dir: str | Path,
        case_id: str,
        grid: Grid = "pet",
        save_probabilities: bool = False,
    ) -> CaseResult:
        """Segment one case and write its mask, lesion report and picture into ``out_dir``.

        The mask is written on the original PET grid (``grid="pet"``) or the CT file's grid
        (``grid="ct"``) with that file's affine; the lesions are always measured on the PET grid
        with the original SUV values. All files of the case appear together or not at all.

        Args:
            ct: CT NIfTI in HU.
            pet: PET NIfTI in SUV.
            out_dir: output folder (created).
            case_id: prefix of the output files.
            grid: ``"pet"`` or ``"ct"``: the grid of the written mask and probabilities.
            save_probabilities: also write ``{case}_prob.nii.gz`` (lesion probability, float32;
                one volume per foreground class, last axis, for multi-class models).

        Returns:
            The paths written and the case summary.
        """
        if grid not in ("pet", "ct"):
            raise ValueError(f"grid must be 'pet' or 'ct', got {grid!r}")
        ct, pet, out_dir = Path(ct), Path(pet), Path(out_dir)
        check_output_dir(out_dir)
        pet_image, ct_image = check_case_inputs(ct, pet)
        data = self.transforms({"case_id": case_id, "patient_id": case_id, "ct": str(ct), "pet": str(pet)})
        probabilities = self.predict_volume(data["image"][None])[0]
        labels = self.labels_from(probabilities)
        pet_labels, _ = restore_to_original(labels, data, grid="pet", mode="nearest")
        grid_image = pet_image if grid == "pet" else ct_image
        grid_labels = pet_labels if grid == "pet" else restore_to_original(labels, data, grid="ct")[0]
        pet_suv = np.asarray(pet_image.dataobj, dtype=np.float32)
        lesions = lesion_table(pet_labels, pet_suv, pet_image.affine)
        summary = case_summary(lesions, self.classes)

        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            name: out_dir / f"{case_id}_{name}"
            for name in ("seg.nii.gz", "lesions.csv", "summary.json", "mip.png")
            + (("prob.nii.gz",) if save_probabilities else ())
        }
        with ExitStack() as stack:
            staged = {name: stack.enter_context(atomic_output(path)) for name, path in paths.items()}
            _save_nifti(grid_labels.astype(np.uint8), grid_image, staged["seg.nii.gz"])
            write_lesion_report(lesions, staged["lesions.csv"], staged["summary.json"], case_id, self.classes)
            save_nifti_case_figure(pet_image, pet_labels, ct_image, staged["mip.png"], title=case_id)
            if save_probabilities:
                foreground = probabilities[1:] if self.activation == "softmax" else probabilities
                restored, _ = restore_to_original(foreground, data, grid=grid, mode="linear")
                volume = restored[0] if len(restored) == 1 else np.moveaxis(restored, 0, -1)
                _save_nifti(volume.astype(np.float32), grid_image, staged["prob.nii.gz"])
        logger.info(
            "%s: %d lesion(s), MTV %.1f mL", case_id, summary["lesion_count"], summary["total_mtv_ml"]
        )
        return CaseResult(
            case_id=case_id,
            mask=paths["seg.nii.gz"],
            lesions_csv=paths["lesions.csv"],
            summary_json=paths["summary.json"],
            figure=paths["mip.png"],
            probabilities=paths.get("prob.nii.gz"),
            summary=summary,
        )


def predict(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    ct: str | Path | None = None,
    pet: str | Path | None = None,
    dataset: str | Path | None = None,
    ct_dicom: str | Path | None = None,
    pet_dicom: str | Path | None = None,
    grid: Grid = "pet",
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    tta: TtaSetting = None,
    save_probabilities: bool = False,
    device: str = "auto",
) -> list[CaseResult]:
    """Segment one NIfTI pair, every case of a dataset folder, or one DICOM study.

    Exactly one input: ``ct`` + ``pet`` (NIfTI, HU and SUV), ``dataset`` (a folder in any layout
    :func:`h2aseg.data.layouts.read_dataset` knows; labels not needed), or ``ct_dicom`` +
    ``pet_dicom`` (series folders, converted to NIfTI with SUV in a temporary folder first).
    Every input is checked before the first case runs.

    Args:
        model_path: checkpoint (see :meth:`Predictor.from_checkpoint`).
        out_dir: output folder (created; must not be a file).
        grid, save_probabilities: as in :meth:`Predictor.predict_case`.
        overlap, sw_batch_size, tta, device: as in :class:`Predictor` (``None`` = the config's).

    Returns:
        One :class:`CaseResult` per case, in input order.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    given = {
        "--ct/--pet": (ct, pet),
        "--dataset": (dataset,),
        "--ct-dicom/--pet-dicom": (ct_dicom, pet_dicom),
    }
    chosen = [name for name, values in given.items() if any(value is not None for value in values)]
    if len(chosen) != 1:
        raise ValueError("give exactly one input: --ct with --pet, --dataset, or --ct-dicom with --pet-dicom")
    if any(value is None for value in given[chosen[0]]):
        raise ValueError(f"{chosen[0]}: both of the pair are needed")
    predictor = Predictor.from_checkpoint(
        model_path, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta
    )
    with tempfile.TemporaryDirectory(prefix="h2aseg-dicom-") as scratch:
        if dataset is not None:
            cases = [(case.case_id, case.ct, case.pet) for case in read_dataset(Path(dataset))]
        elif ct is not None and pet is not None:
            cases = [(case_id_from_path(Path(pet)), Path(ct), Path(pet))]
        else:
            converted = convert_dicom(Path(ct_dicom), Path(pet_dicom), Path(scratch))
            cases = [(case_id_from_path(Path(pet_dicom)), converted["ct"], converted["pet_suv"])]
        for _, case_ct, case_pet in cases:
            check_case_inputs(case_ct, case_pet)
        return [
            predictor.predict_case(case_ct, case_pet, out_dir, case_id, grid, save_probabilities)
            for case_id, case_ct, case_pet in track(cases, description="segmenting", disable=len(cases) < 2)
        ]


def flip_combinations(tta: TtaSetting) -> tuple[tuple[int, ...], ...]:
    """The flips averaged by TTA, identity ``()`` first.

    Args:
        tta: ``True`` (all 7 non-empty combinations of X, Y, Z), ``False``/``None`` (none), or
            axis tuples with spatial axes 0, 1, 2.
    """
    if tta is None or tta is False:
        return ((),)
    if tta is True:
        return ((), *ALL_FLIPS)
    if isinstance(tta, str):
        raise ValueError(f"tta must be a bool or a list of axis tuples, got {tta!r}")
    combinations = {tuple(sorted(set(int(axis) for axis in axes))) for axes in tta}
    if any(axis not in (0, 1, 2) for axes in combinations for axis in axes):
        raise ValueError(f"TTA flip axes must be among 0, 1, 2 (X, Y, Z), got {sorted(combinations)}")
    return ((), *sorted((axes for axes in combinations if axes), key=lambda axes: (len(axes), axes)))


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; other values as ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def case_id_from_path(path: Path) -> str:
    """Case id of a lone PET file or DICOM folder.

    The name without ``.nii[.gz]`` and a ``_pet``/``_suv``/``_0001`` suffix; when that leaves a
    generic name (``SUV.nii.gz``, ``PET/dicom/``), the nearest parent folder with a specific name.
    """
    stem = path.name.removesuffix(".gz").removesuffix(".nii")
    for suffix in ("_pet_suv", "_pet", "_suv", "_0001"):
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            stem = stem[: -len(suffix)]
            break
    folders = [parent.name for parent in path.resolve().parents if parent.name]
    return next((name for name in (stem, *folders) if name.lower() not in _GENERIC_NAMES), stem)


def check_output_dir(out_dir: Path) -> None:
    """A ``ValueError`` when ``out_dir`` exists and is not a folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: the output folder is a file")


def check_case_inputs(ct: Path, pet: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """Check that CT and PET are readable 3-D NIfTI files that overlap in space.

    Returns:
        ``(pet_image, ct_image)`` (headers loaded, data lazy).
    """
    images = {}
    for name, path in (("PET", pet), ("CT", ct)):
        if not path.is_file():
            raise ValueError(f"{path}: no such {name} file")
        try:
            image = nib.load(path)
        except Exception as error:  # nibabel raises ImageFileError, OSError, EOFError...
            raise ValueError(f"{path}: not a readable NIfTI {name} image ({_first_line(error)})") from error
        if len(image.shape) != 3:
            raise ValueError(f"{path}: the {name} must be a 3-D volume, got shape {image.shape}")
        images[name] = image
    pet_box, ct_box = _extent_mm(images["PET"]), _extent_mm(images["CT"])
    if np.any(np.maximum(pet_box[0], ct_box[0]) >= np.minimum(pet_box[1], ct_box[1])):
        raise ValueError(
            f"{ct} and {pet}: CT and PET do not overlap in space "
            f"(CT {_box_text(ct_box)} mm, PET {_box_text(pet_box)} mm; different studies or broken affines?)"
        )
    return images["PET"], images["CT"]


def _extent_mm(image: nib.Nifti1Image) -> np.ndarray:
    """``(2, 3)`` lower and upper RAS corners (mm) of the volume, voxel edges included."""
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in image.shape[:3]])))
    world = nib.affines.apply_affine(image.affine, corners)
    return np.stack([world.min(axis=0), world.max(axis=0)])


def _box_text(box: np.ndarray) -> str:
    return " x ".join(f"[{low:.0f}, {high:.0f}]" for low, high in box.T)


def _load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """``load_state_dict`` with a one-line error that says how the weights differ."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise ValueError(
            f"{path}: its weights do not fit model {name!r} ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(reshaped)} of another shape, e.g. {example!r}); a checkpoint of another model?"
        )
    model.load_state_dict(weights)


def _save_nifti(array: np.ndarray, like: nib.Nifti1Image, path: Path) -> None:
    """Save ``array`` with a copy of ``like``'s header, so the qform/sform (codes included) match it."""
    header = like.header.copy()
    header.set_data_dtype(array.dtype)
    header["cal_min"], header["cal_max"] = 0.0, 0.0  # the source's display range does not fit
    nib.save(type(like)(array, None, header=header), path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
