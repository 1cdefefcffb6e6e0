"""MONAI preprocessing pipelines for PET/CT (the cache of their deterministic part is
:mod:`h2aseg.data.dataset`, the geometry restore :mod:`h2aseg.data.restore`; both re-exported here).

One case enters as ``{"ct": path, "pet": path, "label"?: path, ...}`` (``Case.as_dict()``)
and leaves the deterministic part as

- ``"image"``: float32 MetaTensor ``(2, X, Y, Z)``, channel 0 CT, channel 1 PET, both scaled
  to [0, 1], on the (RAS-reoriented, optionally respaced, body-cropped) PET grid;
- ``"label"``: uint8 MetaTensor ``(1, X, Y, Z)`` on the same grid (with labels);
- ``"preprocessed_affine"``: float64 ``(4, 4)`` tensor, voxel → RAS mm of that grid;
- ``"original_pet_affine"`` / ``"original_ct_affine"``: float64 ``(4, 4)`` NIfTI affines of the
  input files, ``"original_pet_shape"`` / ``"original_ct_shape"``: int64 ``(3,)`` their shapes.

The geometry lives in plain tensor keys because MONAI's ``PersistentDataset`` stores plain
tensors (``torch.load(weights_only=True)`` cannot read MetaTensor metadata back).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import monai
import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from h2aseg.data.augment import augmentations
from h2aseg.data.dataset import make_dataset as make_dataset
from h2aseg.data.restore import restore_to_original as restore_to_original

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2
"""Bumped whenever the cached output of the deterministic part changes meaning (2: crop indices)."""

INDEX_KEYS = ("label_fg_indices", "label_bg_indices")
"""Keys of the cached flat voxel indices the training crop draws lesion and background centres from."""

# Name prefixes of the config fields that act only after the cached (deterministic) part.
_RANDOM_STAGE_PREFIXES = (
    "samples_",
    "positive_",
    "augment",
    "rotation_",
    "flip_",
    "zoom_",
    "intensity_",
    "cache_",
)


@dataclass
class PreprocessConfig:
    """Preprocessing, patch sampling and augmentation settings (the YAML ``preprocess:`` section).

    Args:
        ct_window_hu: CT window in HU, clipped and mapped linearly to [0, 1] (-1000 HU = air → 0).
        pet_clip_suv: PET range in SUV (body weight), clipped and mapped linearly to [0, 1];
            [0, 20] keeps every clinically relevant FDG uptake while bounding bladder/brain peaks.
        target_spacing_mm: resample the PET grid to this spacing (X, Y, Z) in mm; ``None`` keeps it.
        crop_foreground: crop each case to the body bounding box (plus ``crop_margin_voxels``).
        body_threshold_hu: a voxel is body where CT is above this (HU) ...
        body_threshold_suv: ... or PET is above this (SUV).
        crop_margin_voxels: margin kept around the body box, in voxels of the working grid.
        binarize_label: map every label > 0 to 1 (HECKTOR GTVp = 1, GTVn = 2 → lesion).
        patch_size: training patch (X, Y, Z) in voxels (paper: 128 × 128 × 64).
        samples_per_volume: patches drawn from each volume per epoch.
        positive_fraction: probability that a patch is centred on a lesion voxel (0.5 with two
            samples is the authors' ``pos=1, neg=1``; MONAI draws each sample independently).
        augment: master switch of the augmentations below (off = patches only).
        rotation_prob: probability of a random rotation.
        rotation_deg: largest rotation in degrees about the X, Y and Z axes.
        flip_prob: probability of a flip, drawn independently for each axis in ``flip_axes``.
        flip_axes: spatial axes (0 = X, 1 = Y, 2 = Z) that may be flipped.
        zoom_prob: probability of a random isotropic-range zoom (scaling).
        zoom_range: smallest and largest zoom factor.
        intensity_prob: probability of each intensity augmentation (scale, then shift).
        intensity_scale: the scaled image is multiplied by ``1 + U(-s, s)``.
        intensity_shift: ``U(-o, o)`` is added to the scaled image.
    """

    ct_window_hu: tuple[float, float] = (-1000.0, 1000.0)
    pet_clip_suv: tuple[float, float] = (0.0, 20.0)
    target_spacing_mm: tuple[float, float, float] | None = None
    crop_foreground: bool = True
    body_threshold_hu: float = -500.0
    body_threshold_suv: float = 0.2
    crop_margin_voxels: int = 8
    binarize_label: bool = True
    patch_size: tuple[int, int, int] = (128, 128, 64)
    samples_per_volume: int = 2
    positive_fraction: float = 0.5
    augment: bool = True
    rotation_prob: float = 0.8
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 45.0)
    flip_prob: float = 0.0
    flip_axes: tuple[int, ...] = (0,)
    zoom_prob: float = 0.2
    zoom_range: tuple[float, float] = (0.9, 1.1)
    intensity_prob: float = 0.2
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1

    def __post_init__(self) -> None:
        for name in ("ct_window_hu", "pet_clip_suv", "zoom_range"):
            low, high = getattr(self, name)
            if not low < high:
                raise ValueError(f"preprocess.{name} must be (low, high) with low < high, got {low, high}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"preprocess.patch_size must be three positive ints, got {self.patch_size}")
        spacing = self.target_spacing_mm
        if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
            raise ValueError(f"preprocess.target_spacing_mm must be 3 positive mm, got {spacing}")
        if self.samples_per_volume < 1:
            raise ValueError(f"preprocess.samples_per_volume must be >= 1, got {self.samples_per_volume}")
        for name in ("positive_fraction", "rotation_prob", "flip_prob", "zoom_prob", "intensity_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"preprocess.{name} must lie in [0, 1], got {getattr(self, name)}")
        if any(axis not in (0, 1, 2) for axis in self.flip_axes):
            raise ValueError(f"preprocess.flip_axes must be among 0, 1, 2, got {self.flip_axes}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> PreprocessConfig:
        """Builds a config from plain values (YAML or checkpoint); lists become tuples.

        Raises:
            ValueError: on an unknown key or an out-of-range value.
        """
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown preprocess option(s) {unknown}; known: {sorted(known)}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, numbers, strings, None) for YAML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class RecordGeometryd(mt.MapTransform):
    """Stores each key's original affine and spatial shape as plain tensors.

    Run right after loading: ``original_{key}_affine`` (float64 ``(4, 4)``, the NIfTI affine as
    MONAI's nibabel reader returns it) and ``original_{key}_shape`` (int64 ``(3,)``).
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            d[f"original_{key}_affine"] = torch.as_tensor(np.asarray(image.affine), dtype=torch.float64)
            d[f"original_{key}_shape"] = torch.as_tensor(image.shape[1:], dtype=torch.int64)
        return d


class FinalizeGeometryd(mt.MapTransform):
    """Stores the working-grid affine in ``preprocessed_affine`` and strips the MetaTensors' metadata.

    Every key in ``keys`` becomes a MetaTensor carrying only that affine, so freshly computed and
    cache-loaded cases (see :func:`make_dataset`) have identical structure and collate together.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        affine = torch.as_tensor(np.asarray(d["image"].affine), dtype=torch.float64)
        d["preprocessed_affine"] = affine
        for key in self.key_iterator(d):
            d[key] = MetaTensor(torch.as_tensor(d[key]).as_subclass(torch.Tensor), affine=affine.clone())
        return d


class BodySelector:
    """``select_fn`` for ``CropForegroundd`` on the scaled ``(2, X, Y, Z)`` image: CT or PET above a level.

    A picklable class rather than a lambda so that DataLoader workers can use it.
    Selects everything when nothing passes, so an all-air volume is kept rather than emptied.
    """

    def __init__(self, ct_level: float, pet_level: float) -> None:
        self.levels = torch.tensor([ct_level, pet_level]).view(2, 1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        body = torch.as_tensor(image) > self.levels.to(image.device)
        return body if bool(body.any()) else torch.ones_like(body)


class ConfiguredCompose(mt.Compose):
    """A ``Compose`` that remembers its config and stage, which name its cache folder."""

    def __init__(self, transforms: Sequence[Any], cfg: PreprocessConfig, stage: str) -> None:
        super().__init__(transforms)
        self.cfg = cfg
        self.stage = stage

    @property
    def cache_key(self) -> str:
        """Hash of everything that shapes the cached (deterministic) output."""
        settings = {k: v for k, v in self.cfg.to_dict().items() if not k.startswith(_RANDOM_STAGE_PREFIXES)}
        payload = {"settings": settings, "stage": self.stage, "format": CACHE_FORMAT_VERSION}
        payload["monai"] = monai.__version__
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _scaled_level(value: float, low: float, high: float) -> float:
    """Where ``value`` lands after clipping to [low, high] and mapping linearly to [0, 1]."""
    return float(np.clip((value - low) / (high - low), 0.0, 1.0))


def body_levels(cfg: PreprocessConfig) -> tuple[float, float]:
    """The body thresholds (CT in HU, PET in SUV) on the scaled image: a voxel above either is body."""
    return (
        _scaled_level(cfg.body_threshold_hu, *cfg.ct_window_hu),
        _scaled_level(cfg.body_threshold_suv, *cfg.pet_clip_suv),
    )


def _deterministic_steps(cfg: PreprocessConfig, with_label: bool) -> list[Any]:
    """The list of deterministic transforms (see :func:`preprocess_transforms`)."""
    keys = ["ct", "pet", "label"] if with_label else ["ct", "pet"]
    moving = keys[::2]  # CT (+ label), bilinear (+ nearest), edge-replicated (+ zero) outside the CT
    modes, paddings = ["bilinear", "nearest"][: len(moving)], ["border", "zeros"][: len(moving)]
    steps: list[Any] = [
        mt.LoadImaged(keys=keys, reader="NibabelReader", image_only=True),
        mt.EnsureChannelFirstd(keys=keys, channel_dim="no_channel"),
        RecordGeometryd(keys=["ct", "pet"]),
        mt.Orientationd(keys=keys, axcodes="RAS", labels=None),
    ]
    if cfg.target_spacing_mm is not None:
        steps.append(mt.Spacingd(keys=["pet"], pixdim=cfg.target_spacing_mm, mode="bilinear"))
    # ResampleToMatch leaves CT alone where the grids already agree (AutoPET); HECKTOR's CT/label move.
    steps.append(mt.ResampleToMatchd(moving, "pet", mode=modes, padding_mode=paddings, dtype=np.float32))
    (ct_low, ct_high), (pet_low, pet_high) = cfg.ct_window_hu, cfg.pet_clip_suv
    steps += [
        mt.ScaleIntensityRanged(["ct"], a_min=ct_low, a_max=ct_high, b_min=0.0, b_max=1.0, clip=True),
        mt.ScaleIntensityRanged(["pet"], a_min=pet_low, a_max=pet_high, b_min=0.0, b_max=1.0, clip=True),
        mt.ConcatItemsd(keys=["ct", "pet"], name="image", dim=0),
        mt.DeleteItemsd(keys=["ct", "pet"]),
    ]
    image_keys = ["image", "label"] if with_label else ["image"]
    if cfg.crop_foreground:
        selector = BodySelector(*body_levels(cfg))
        crop_keys = {"start_coord_key": None, "end_coord_key": None, "allow_smaller": True}
        steps.append(
            mt.CropForegroundd(image_keys, "image", selector, margin=cfg.crop_margin_voxels, **crop_keys)
        )
    if with_label and cfg.binarize_label:
        steps.append(mt.AsDiscreted(keys=["label"], threshold=0.5))
    steps += [
        mt.CastToTyped(keys=image_keys, dtype=[torch.float32, torch.uint8][: len(image_keys)]),
        FinalizeGeometryd(keys=image_keys),
    ]
    return steps


def preprocess_transforms(cfg: PreprocessConfig, with_label: bool) -> ConfiguredCompose:
    """Deterministic part shared by training, validation and prediction.

    Load (nibabel) → channel first → record the original CT/PET geometry → RAS → optional
    respacing of the PET → CT (bilinear) and label (nearest) onto the PET grid → CT window and
    PET clip, each to [0, 1] → ``"image"`` ``(2, X, Y, Z)`` → body crop → label binarised
    (optional) as uint8 ``(1, X, Y, Z)``. See the module docstring for the output keys.

    Args:
        cfg: preprocessing settings.
        with_label: load and transform ``"label"`` too.

    Returns:
        The pipeline, a ``Compose`` carrying ``cfg`` and a cache key.
    """
    return ConfiguredCompose(_deterministic_steps(cfg, with_label), cfg, "label" if with_label else "image")


def train_transforms(cfg: PreprocessConfig) -> ConfiguredCompose:
    """Preprocess with labels, pad to the patch, index lesion/background voxels, sample patches, augment.

    The deterministic part (cached) ends with the flat int32 voxel indices of the lesion
    (``label > 0``) and of the background inside the body (``label == 0`` and CT or PET above 0
    after scaling) under ``INDEX_KEYS``; the crop draws its centres from them, and the rotation
    and zoom act on the patch only. Each call on a case returns a list of ``cfg.samples_per_volume``
    dicts with ``"image"`` ``(2, *patch_size)`` float32 and ``"label"`` ``(1, *patch_size)`` uint8. Seed with
    ``monai.utils.set_determinism(seed)`` or ``pipeline.set_random_state(seed)``.
    """
    steps = _deterministic_steps(cfg, with_label=True)
    steps += [
        mt.SpatialPadd(keys=["image", "label"], spatial_size=cfg.patch_size, mode="constant"),
        # Cached with the case: recomputing them scanned the whole volume on every draw.
        mt.FgBgToIndicesd(keys="label", image_key="image", image_threshold=0.0),
        mt.CastToTyped(keys=list(INDEX_KEYS), dtype=torch.int32),  # half the bytes; < 2**31 voxels
        mt.RandCropByPosNegLabeld(
            keys=["image", "label"],
            label_key="label",
            spatial_size=cfg.patch_size,
            pos=cfg.positive_fraction,
            neg=1.0 - cfg.positive_fraction,
            num_samples=cfg.samples_per_volume,
            fg_indices_key=INDEX_KEYS[0],
            bg_indices_key=INDEX_KEYS[1],
        ),
    ]
    if cfg.augment:
        steps += augmentations(cfg)
    steps.append(mt.CastToTyped(keys=["image", "label"], dtype=[torch.float32, torch.uint8]))
    return ConfiguredCompose(steps, cfg, "train")


def val_transforms(cfg: PreprocessConfig) -> ConfiguredCompose:
    """Whole preprocessed volumes with labels (``preprocess_transforms(cfg, with_label=True)``)."""
    return preprocess_transforms(cfg, with_label=True)


def predict_transforms(cfg: PreprocessConfig) -> ConfiguredCompose:
    """Whole preprocessed volumes without labels (``preprocess_transforms(cfg, with_label=False)``)."""
    return preprocess_transforms(cfg, with_label=False)
