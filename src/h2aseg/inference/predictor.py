"""Whole-volume prediction: one sliding-window inferer (validation uses it too), flip TTA, and
``Predictor``, which turns a case into probabilities and hands them to :mod:`h2aseg.inference.export`.

Built apart from loading, the nnU-Net way: ``Predictor(model, config)`` for a network in hand,
``Predictor.from_checkpoint(path)`` for a checkpoint (:mod:`h2aseg.inference.checkpoint`). The
library function behind ``h2aseg predict`` is :func:`h2aseg.pipeline.predict.predict`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from h2aseg.config import InferenceConfig, to_plain
from h2aseg.data.transforms import PreprocessConfig, body_levels, predict_transforms
from h2aseg.errors import root_cause
from h2aseg.inference.checkpoint import load_checkpoint
from h2aseg.inference.export import CaseResult, Grid, check_case_inputs, check_output_dir, export_case
from h2aseg.models.registry import check_contract

TtaSetting = bool | Sequence[Sequence[int]] | None
ALL_FLIPS = tuple(axes for size in (1, 2, 3) for axes in itertools.combinations((0, 1, 2), size))


def sliding_window_logits(
    model: nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    sw_batch_size: int,
    overlap: float,
    mode: str,
) -> torch.Tensor:
    """Logits ``(B, C, X, Y, Z)`` of a whole volume ``(B, 2, X, Y, Z)`` from windows of ``roi_size``
    blended with ``mode`` (``gaussian`` or ``constant``), MONAI's sliding-window inferer."""
    logits = sliding_window_inference(
        image,
        roi_size=tuple(int(n) for n in roi_size),
        sw_batch_size=sw_batch_size,
        predictor=model,
        overlap=overlap,
        mode=mode,
    )
    return torch.as_tensor(logits)


class Predictor:
    """Segments whole PET/CT volumes with a trained network.

    Args:
        model: a :class:`h2aseg.models.registry.SegmentationNetwork`.
        config: the resolved run config (``preprocess`` and optional ``inference`` sections; missing
            ``inference`` keys take the defaults of :class:`h2aseg.config.InferenceConfig`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
        overlap: sliding-window overlap in [0, 1); ``None`` takes the config's.
        sw_batch_size: windows per forward pass; ``None`` takes the config's.
        tta: flip test-time augmentation: ``True`` averages the identity and all 7 flip
            combinations of the X, Y, Z axes, ``False`` the identity only, a list of axis tuples
            (``[(0,), (0, 1)]``, 0 = X) the identity and those flips; ``None`` takes the config's.
        skip_air: windows that hold only air (nothing above the preprocessing's body thresholds)
            are not run and get background probabilities.

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
        skip_air: bool = True,
    ) -> None:
        config = to_plain(config)
        inference = {**asdict(InferenceConfig()), **(config.get("inference") or {})}
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
        check_contract(model, type(model).__name__)
        self.activation = model.output_activation
        self.out_channels = int(model.out_channels)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.transforms = predict_transforms(self.preprocess)
        self.skip_air = skip_air
        self.body_levels = torch.tensor(body_levels(self.preprocess), device=self.device).view(1, 2)
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
        """The predictor of a checkpoint (:func:`h2aseg.inference.checkpoint.load_checkpoint`).

        Args:
            path: Lightning ``.ckpt`` with ``hyper_parameters.config`` and ``state_dict``.
            device, overlap, sw_batch_size, tta: as in :class:`Predictor`.

        Raises:
            ValueError: missing or unreadable file, no config, or weights of another model.
        """
        model, config = load_checkpoint(path)
        return cls(model, config, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta)

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities of a preprocessed volume.

        Args:
            image: ``(1, 2, X, Y, Z)`` float (CT, PET as scaled by the preprocessing).

        Returns:
            float32 CPU tensor ``(1, out_channels, X, Y, Z)``: the Gaussian-blended window
            probabilities (softmax or sigmoid, averaged over the TTA flips within each window;
            see :meth:`window_probabilities`).
        """
        if image.ndim != 5 or image.shape[:2] != (1, 2):
            raise ValueError(f"image must be (1, 2, X, Y, Z), got {tuple(image.shape)}")
        image = torch.as_tensor(image).as_subclass(torch.Tensor).to(self.device, torch.float32)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with torch.inference_mode(), autocast:
            probabilities = sliding_window_inference(
                image,
                roi_size=self.roi_size,
                sw_batch_size=self.sw_batch_size,
                predictor=self.window_probabilities,
                overlap=self.overlap,
                mode=self.blend_mode,
            )
        return torch.as_tensor(probabilities).as_subclass(torch.Tensor).float().cpu()

    def window_probabilities(self, windows: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of windows, averaged over the TTA flips, air windows skipped.

        Every flip of every window that holds body goes through the network in one batch
        (``B × len(flips)`` windows); a window with no voxel above the body thresholds of the
        preprocessing (CT above -500 HU or PET above 0.2 SUV by default: only air) is not run
        and gets the background probabilities (1 for class 0, or 0 for a sigmoid).

        Args:
            windows: ``(B, 2, x, y, z)`` float, on the predictor's device.

        Returns:
            float32 ``(B, out_channels, x, y, z)``.
        """
        probabilities = torch.zeros(
            (windows.shape[0], self.out_channels, *windows.shape[2:]), device=windows.device
        )
        if self.activation == "softmax":
            probabilities[:, 0] = 1.0
        if self.skip_air:
            body = (windows.amax(dim=(2, 3, 4)) > self.body_levels.to(windows.device)).any(dim=1)
        else:
            body = torch.ones(windows.shape[0], dtype=torch.bool, device=windows.device)
        if not bool(body.any()):
            return probabilities
        kept = windows[body]
        dims = [[axis + 2 for axis in axes] for axes in self.flips]
        logits = self.model(torch.cat([kept.flip(d) if d else kept for d in dims]))
        flipped = self._activate(torch.as_tensor(logits).float()).split(len(kept))
        total = sum(p.flip(d) if d else p for p, d in zip(flipped, dims, strict=True))
        probabilities[body] = total / len(dims)
        return probabilities

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
        """Segment one case and write its mask, lesion report and picture into ``out_dir``
        (:func:`h2aseg.inference.export.export_case`).

        The mask is written on the original PET grid (``grid="pet"``) or the CT file's grid
        (``grid="ct"``) with that file's affine; the lesions are always measured on the PET grid
        with the original SUV values. Each file appears only once complete (written under a
        temporary name, then renamed); a case that fails leaves none.

        Args:
            ct: CT NIfTI in HU.
            pet: PET NIfTI in SUV.
            out_dir: output folder (created).
            case_id: prefix of the output files (a plain name: no folder part, not ``.``/``..``).
            grid: ``"pet"`` or ``"ct"``: the grid of the written mask and probabilities.
            save_probabilities: also write ``{case}_prob.nii.gz`` (lesion probability, float32;
                one volume per foreground class, last axis, for multi-class models).

        Returns:
            The paths written and the case summary.
        """
        if grid not in ("pet", "ct"):
            raise ValueError(f"grid must be 'pet' or 'ct', got {grid!r}")
        ct, pet, out_dir = Path(ct), Path(pet), Path(out_dir)
        if not case_id or case_id in (".", "..") or Path(case_id).name != case_id or "\\" in case_id:
            raise ValueError(f"case_id {case_id!r}: must be a plain file name prefix (no folder part)")
        check_output_dir(out_dir)
        images = check_case_inputs(ct, pet)
        item = {"case_id": case_id, "patient_id": case_id, "ct": str(ct), "pet": str(pet)}
        try:
            data = self.transforms(item)
        except Exception as error:  # MONAI wraps a reader's error (EOFError of a truncated gzip) in its own
            raise ValueError(f"{ct}, {pet}: cannot be read or preprocessed ({root_cause(error)})") from error
        probabilities = self.predict_volume(data["image"][None])[0]
        labels = self.labels_from(probabilities)
        return export_case(
            probabilities,
            labels,
            data,
            images,
            out_dir,
            case_id,
            self.activation,
            grid,
            save_probabilities,
            classes=self.classes,
        )


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
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {str(device)!r}: not a device (auto, cpu, cuda or cuda:N)") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine (use cpu or auto)")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA device(s)")
    return chosen
