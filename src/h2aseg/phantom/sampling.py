"""Presets of the synthetic PET/CT phantom and the random draw of one case's parameters.

Drawing the parameters (body, tissue values, lesions, noise levels, misregistration) is cheap and
separate from rendering, so cohort statistics (the share of lesion-free cases, lesion sizes) can
be checked without making a single volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from h2aseg.phantom.anatomy import Body, BodyFrame, body_paints, sample_body
from h2aseg.phantom.lesions import (
    MIMIC_INDEX_BASE,
    LesionParams,
    Site,
    draw_lesion,
    draw_mimic,
    lesion_fits,
    lesion_paints,
    lesion_sites,
    mimic_sites,
)
from h2aseg.phantom.shapes import Grid, Paint, Vec3
from h2aseg.phantom.tissues import LESION_INDEX_BASE, TISSUE_INDEX, TISSUES

PresetName = Literal["small", "autopet", "hecktor"]


@dataclass(frozen=True)
class Preset:
    """Geometry, lesions and acquisition of one kind of synthetic study.

    Args:
        name: preset name.
        ct_grid: grid of the CT (and of the mask).
        pet_grid: grid of the PET; ``None`` = the CT grid (AutoPET's CTres).
        region: ``trunk`` (no head or legs, shortened), ``whole_body`` (thighs to vertex) or
            ``head_neck`` (an adult body seen through a head-and-neck field of view).
        site_weights: probability of each lesion category (``lung``, ``liver``, ``node``,
            ``bone``, ``gtvn``) for metastatic-type presets.
        diameter_mm: range of lesion diameters, per category (``default`` for the rest).
        log_uniform_diameter: draw diameters log-uniformly (many small lesions, as in AutoPET)
            instead of uniformly (mostly learnable sizes).
        excess_suv: range of lesion SUV above the local background, per category.
        negative_fraction: share of lesion-free cases.
        mean_extra_lesions: Poisson mean of lesions beyond the first in a positive case.
        max_lesions: most lesions in one case.
        pet_fwhm_mm: scanner resolution (Gaussian FWHM), mm.
        liver_noise_cv: range of the PET coefficient of variation in the liver (count level).
        ct_noise_hu: range of the CT noise standard deviation, HU.
        shift_probability: same-grid presets: chance of a one-voxel PET shift along each axis.
        shift_sd_mm: two-grid presets: standard deviation of the PET shift along each axis, mm.
        multiclass: labels 1 = GTVp, 2 = GTVn (HECKTOR) instead of 1 = lesion.
        mimics_per_case: Poisson mean of CT-only-separable mimics in every case (0 = none): hot foci
            with the size, shape and uptake distributions of the ``default`` lesions, label 0, and no
            CT mass (brown fat, focal muscle or bowel uptake; see :func:`draw_mimic`).
        max_mimics: most mimics in one case.
        mimic_weights: probability of each mimic category (``brownfat``, ``muscle``, ``bowel``).
    """

    name: str
    ct_grid: Grid
    pet_grid: Grid | None
    region: Literal["trunk", "whole_body", "head_neck"]
    site_weights: dict[str, float] = field(default_factory=dict)
    diameter_mm: dict[str, tuple[float, float]] = field(default_factory=dict)
    log_uniform_diameter: bool = True
    excess_suv: dict[str, tuple[float, float]] = field(default_factory=dict)
    negative_fraction: float = 1.0 / 3.0
    mean_extra_lesions: float = 1.0
    max_lesions: int = 6
    pet_fwhm_mm: float = 6.5
    liver_noise_cv: tuple[float, float] = (0.08, 0.18)
    ct_noise_hu: tuple[float, float] = (8.0, 20.0)
    shift_probability: float = 0.15
    shift_sd_mm: float = 1.0
    multiclass: bool = False
    mimics_per_case: float = 0.0
    max_mimics: int = 4
    mimic_weights: dict[str, float] = field(
        default_factory=lambda: {"brownfat": 0.5, "muscle": 0.2, "bowel": 0.3}
    )


def _centred_grid(shape: tuple[int, int, int], spacing: Vec3, z_origin: float) -> Grid:
    """A grid centred on x = y = 0 whose first slice is at ``z_origin`` (scanner-like origin)."""
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(shape[:2], spacing[:2], strict=True))
    return Grid(shape, spacing, (*origin, z_origin))  # type: ignore[arg-type]


_METASTATIC = {"lung": 0.25, "liver": 0.2, "node": 0.4, "bone": 0.15}
PRESETS: dict[str, Preset] = {
    "small": Preset(
        name="small",
        ct_grid=_centred_grid((72, 64, 64), (4.0, 4.0, 4.0), -380.0),
        pet_grid=None,
        region="trunk",
        site_weights=_METASTATIC,
        diameter_mm={"default": (14.0, 40.0)},
        log_uniform_diameter=False,
        excess_suv={"default": (4.0, 12.0)},
        mean_extra_lesions=0.7,
        max_lesions=3,
        liver_noise_cv=(0.08, 0.15),
        ct_noise_hu=(8.0, 15.0),
        shift_probability=0.05,
    ),
    "autopet": Preset(
        name="autopet",
        ct_grid=_centred_grid((400, 400, 360), (2.0364, 2.0364, 3.0), -1250.0),
        pet_grid=None,
        region="whole_body",
        site_weights={**_METASTATIC, "node": 0.35, "gtvn": 0.05},
        diameter_mm={"default": (5.0, 50.0)},
        excess_suv={"default": (2.5, 12.0)},
        mean_extra_lesions=1.5,
        max_lesions=8,
        ct_noise_hu=(10.0, 25.0),
        shift_probability=0.2,
    ),
    "hecktor": Preset(
        name="hecktor",
        ct_grid=_centred_grid((224, 224, 200), (1.0, 1.0, 1.0), -250.0),
        pet_grid=_centred_grid((80, 80, 64), (4.0, 4.0, 4.0), -290.0),
        region="head_neck",
        diameter_mm={"gtvp": (15.0, 45.0), "default": (8.0, 35.0)},
        excess_suv={"gtvp": (4.0, 16.0), "default": (2.5, 12.0)},
        negative_fraction=0.0,
        liver_noise_cv=(0.1, 0.2),
        ct_noise_hu=(15.0, 30.0),
        multiclass=True,
    ),
}


@dataclass(frozen=True)
class CaseParams:
    """Everything random about one case; rendering it is deterministic.

    ``hu``/``suv`` are float32 ``(256,)`` look-up tables and ``label_of_tissue`` uint8 ``(256,)``
    (mask value of each tissue index); lesion ``k`` uses tissue ``LESION_INDEX_BASE + 2k`` and its
    core ``LESION_INDEX_BASE + 2k + 1``, mimic ``k`` ``MIMIC_INDEX_BASE + 2k`` (label 0) and its core.
    """

    seed: int
    preset: Preset
    patient_id: str
    body: Body
    hu: np.ndarray
    suv: np.ndarray
    label_of_tissue: np.ndarray
    lesions: tuple[LesionParams, ...]
    pet_shift_mm: Vec3
    liver_noise_cv: float
    ct_noise_hu: float
    mimics: tuple[LesionParams, ...] = ()

    @property
    def paints(self) -> list[Paint]:
        """Lesion, then mimic painting steps (after the body's), each clipped to its own tissues."""
        steps = [step for k, lesion in enumerate(self.lesions) for step in lesion_paints(k, lesion)]
        return steps + [
            step for k, mimic in enumerate(self.mimics) for step in lesion_paints(k, mimic, MIMIC_INDEX_BASE)
        ]


def sample_appearance(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-case mean CT (HU) and PET (SUV) of every tissue, drawn within :data:`TISSUES`.

    SUV ranges wider than a factor of three are drawn log-uniformly (physiological uptake of the
    myocardium, kidneys and bladder is skewed towards its low end).

    Returns:
        ``hu`` and ``suv`` look-up tables, each float32 ``(256,)`` indexed by tissue index.
    """
    hu = np.full(256, -1000.0, dtype=np.float32)
    suv = np.zeros(256, dtype=np.float32)
    for name, ((hu_low, hu_high), (suv_low, suv_high)) in TISSUES.items():
        index = TISSUE_INDEX[name]
        hu[index] = rng.uniform(hu_low, hu_high)
        if suv_low > 0 and suv_high / suv_low > 3:
            suv[index] = math.exp(rng.uniform(math.log(suv_low), math.log(suv_high)))
        else:
            suv[index] = rng.uniform(suv_low, suv_high)
    return hu, suv


def resolve_preset(preset: PresetName | str | Preset) -> Preset:
    """The :class:`Preset` of a name (``small``, ``autopet``, ``hecktor``), or ``preset`` itself."""
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown phantom preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1])))


def _frame(rng: np.random.Generator, preset: Preset) -> BodyFrame:
    """Place and size the body in the preset's field of view."""
    low, high = preset.ct_grid.extent_mm
    centre = (low + high) / 2
    if preset.region == "trunk":
        half_width = rng.uniform(105.0, 125.0)
        length = rng.uniform(222.0, 240.0)
        floor = low[2] + rng.uniform(2.0, high[2] - low[2] - length)
        return BodyFrame(
            centre[0] + rng.uniform(-8, 8), centre[1] + rng.uniform(-10, 5), floor, length,
            half_width, half_width * rng.uniform(0.65, 0.75), half_width / 170.0, False, False,
        )  # fmt: skip
    size = rng.uniform(0.88, 1.12)
    half_width = 170.0 * size * rng.uniform(0.92, 1.1)
    length = 600.0 * size
    if preset.region == "whole_body":
        floor = low[2] + rng.uniform(50.0, 90.0) * size
    else:
        floor = low[2] + rng.uniform(30.0, 50.0) - length
    return BodyFrame(
        centre[0] + rng.uniform(-15, 15), centre[1] + rng.uniform(-30, 10), floor, length,
        half_width, half_width * rng.uniform(0.62, 0.75), size, True, preset.region == "whole_body",
    )  # fmt: skip


def _size_and_uptake(rng: np.random.Generator, preset: Preset, category: str) -> tuple[float, float]:
    """Nominal diameter (mm) and SUV excess of a lesion of ``category`` (mimics: ``default``)."""
    bounds = preset.diameter_mm.get(category, preset.diameter_mm["default"])
    diameter = _log_uniform(rng, bounds) if preset.log_uniform_diameter else rng.uniform(*bounds)
    return diameter, _log_uniform(rng, preset.excess_suv.get(category, preset.excess_suv["default"]))


def _draw_lesion(
    rng: np.random.Generator, preset: Preset, site: Site, tables: tuple[np.ndarray, np.ndarray]
) -> LesionParams:
    """A lesion at ``site`` with the preset's size and uptake distributions."""
    diameter, excess = _size_and_uptake(rng, preset, site.category)
    label = 2 if preset.multiclass and site.category == "gtvn" else 1
    return draw_lesion(rng, site, diameter, excess, label, tables)


def _choose_sites(rng: np.random.Generator, preset: Preset, sites: list[Site]) -> list[Site]:
    """Sites of this case's lesions (empty for a lesion-free case)."""
    by_category: dict[str, list[Site]] = {}
    for site in sites:
        by_category.setdefault(site.category, []).append(site)
    if preset.region == "head_neck":
        primary = by_category["gtvp"][int(rng.integers(len(by_category["gtvp"])))]
        side = primary.name.rsplit("_", 1)[-1]
        if side not in ("left", "right"):
            side = "left" if rng.random() < 0.5 else "right"
        nodes = [site for site in by_category["gtvn"] if site.name.endswith(side) or rng.random() < 0.2]
        n_nodes = min(int(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1])), len(nodes))
        return [primary, *(nodes[i] for i in rng.permutation(len(nodes))[:n_nodes])]
    if rng.random() < preset.negative_fraction:
        return []
    n_lesions = min(1 + int(rng.poisson(preset.mean_extra_lesions)), preset.max_lesions)
    categories = [c for c in preset.site_weights if c in by_category]
    weights = np.asarray([preset.site_weights[c] for c in categories])
    chosen = rng.choice(categories, size=n_lesions, p=weights / weights.sum())
    return [by_category[c][int(rng.integers(len(by_category[c])))] for c in chosen]


def _place_lesions(
    rng: np.random.Generator, preset: Preset, body: Body, tables: tuple[np.ndarray, np.ndarray]
) -> tuple[tuple[LesionParams, ...], np.ndarray]:
    """Draw the case's lesions (up to 20 tries each to fit its site) and enter their HU and SUV in
    ``tables``; returns them with the mask value of each tissue index (uint8 ``(256,)``)."""
    hu, suv = tables
    label_of_tissue = np.zeros(256, dtype=np.uint8)
    lesions: list[LesionParams] = []
    steps = body_paints(body)
    for site in _choose_sites(rng, preset, lesion_sites(body)):
        for _ in range(20):
            lesion = _draw_lesion(rng, preset, site, tables)
            if lesion_fits(preset.ct_grid, steps, lesion, len(lesions)):
                break
        else:
            continue
        steps += lesion_paints(len(lesions), lesion)
        index = LESION_INDEX_BASE + 2 * len(lesions)
        hu[index : index + 2] = lesion.hu, lesion.core_hu
        suv[index : index + 2] = lesion.suv, lesion.core_suv
        label_of_tissue[index : index + 2] = lesion.label
        lesions.append(lesion)
    return tuple(lesions), label_of_tissue


def _place_mimics(
    rng: np.random.Generator,
    preset: Preset,
    body: Body,
    lesions: tuple[LesionParams, ...],
    tables: tuple[np.ndarray, np.ndarray],
) -> tuple[LesionParams, ...]:
    """Draw ``Poisson(preset.mimics_per_case)`` mimics (at most ``max_mimics``, 20 tries each to fit
    beside the body and the lesions) and enter their HU and SUV in ``tables``; label 0."""
    n_mimics = min(int(rng.poisson(preset.mimics_per_case)), preset.max_mimics)
    if n_mimics == 0:
        return ()
    by_category: dict[str, list[Site]] = {}
    for site in mimic_sites(body):
        by_category.setdefault(site.category, []).append(site)
    categories = [c for c in preset.mimic_weights if c in by_category]
    weights = np.asarray([preset.mimic_weights[c] for c in categories])
    steps = body_paints(body) + [step for k, item in enumerate(lesions) for step in lesion_paints(k, item)]
    mimics: list[LesionParams] = []
    for category in rng.choice(categories, size=n_mimics, p=weights / weights.sum()):
        site = by_category[category][int(rng.integers(len(by_category[category])))]
        for _ in range(20):
            mimic = draw_mimic(rng, site, *_size_and_uptake(rng, preset, "default"), tables)
            if lesion_fits(preset.ct_grid, steps, mimic, len(mimics), MIMIC_INDEX_BASE):
                break
        else:
            continue
        steps += lesion_paints(len(mimics), mimic, MIMIC_INDEX_BASE)
        index = MIMIC_INDEX_BASE + 2 * len(mimics)
        tables[0][index : index + 2] = mimic.hu, mimic.core_hu
        tables[1][index : index + 2] = mimic.suv, mimic.core_suv
        mimics.append(mimic)
    return tuple(mimics)


def _pet_shift(rng: np.random.Generator, preset: Preset) -> Vec3:
    """PET-to-CT misregistration in mm: whole voxels on a shared grid, sub-voxel otherwise."""
    if preset.pet_grid is None:
        p = preset.shift_probability
        voxels = rng.choice([-1, 0, 1], size=3, p=[p / 2, 1 - p, p / 2])
        return tuple(float(k * s) for k, s in zip(voxels, preset.ct_grid.spacing_mm, strict=True))  # type: ignore[return-value]
    return tuple(np.clip(rng.normal(0.0, preset.shift_sd_mm, 3), -2.5, 2.5).tolist())  # type: ignore[return-value]


def sample_case_parameters(
    seed: int, preset: PresetName | Preset = "small", anatomy_seed: int | None = None
) -> CaseParams:
    """Draw every random choice of one case.

    Args:
        seed: seed of the case (lesions, uptake, noise, misregistration).
        preset: preset name or :class:`Preset`.
        anatomy_seed: seed of the patient's body (and patient id); ``None`` = ``seed``. Two
            studies of one patient share it.

    Returns:
        The case parameters.
    """
    preset = resolve_preset(preset)
    anatomy_rng = np.random.default_rng([seed if anatomy_seed is None else anatomy_seed, 1])
    rng = np.random.default_rng([seed, 2])
    patient_id = f"PETCT_{int(anatomy_rng.integers(16**10)):010x}"
    body = sample_body(anatomy_rng, _frame(anatomy_rng, preset))
    hu, suv = sample_appearance(rng)
    lesions, label_of_tissue = _place_lesions(rng, preset, body, (hu, suv))
    # Mimics draw from their own stream: turning them on leaves every other draw of the case unchanged.
    mimics = _place_mimics(np.random.default_rng([seed, 5]), preset, body, lesions, (hu, suv))
    return CaseParams(
        seed=seed,
        preset=preset,
        patient_id=patient_id,
        body=body,
        hu=hu,
        suv=suv,
        label_of_tissue=label_of_tissue,
        lesions=lesions,
        pet_shift_mm=_pet_shift(rng, preset),
        liver_noise_cv=rng.uniform(*preset.liver_noise_cv),
        ct_noise_hu=rng.uniform(*preset.ct_noise_hu),
        mimics=mimics,
    )
