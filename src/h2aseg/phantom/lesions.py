"""Lesions of the synthetic phantom: where they grow, their shape and their CT/PET appearance.

Lesions are lobulated (a sphere with a low-frequency radial perturbation, or a union of two or
three ellipsoids), clipped to the tissues of their site so that a lung nodule stays in the lung
and a bone lesion in bone. Their CT contrast depends on the site (clear in lung and fat, faint in
liver and muscle), which is what makes the CT useful next to the PET.

Mimics are hot foci drawn exactly like lesions (same size, shape, uptake and blur) that are not
tumours and leave the CT unchanged: brown fat at the node stations and above the clavicles, focal
muscle uptake, focal bowel uptake. The PET alone cannot tell them from lesions; the CT can (a node
is a soft-tissue mass in fat, a brown-fat focus is fat).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from h2aseg.phantom.anatomy import Body, organ_tissue
from h2aseg.phantom.shapes import (
    Ellipsoid,
    Grid,
    Lobulated,
    Paint,
    Shape,
    Union,
    Vec3,
    random_rotation,
    render,
)
from h2aseg.phantom.tissues import BONE_TISSUES, LESION_INDEX_BASE, SOFT_TISSUES, TISSUE_INDEX


@dataclass(frozen=True)
class Site:
    """Where lesions of one kind grow.

    Args:
        name: ``{category}_{where}``, category ``lung``, ``liver``, ``node``, ``bone``, ``gtvp``, ``gtvn``.
        start, end: centres are drawn on the segment ``start``–``end`` (mm) plus ``spread_mm``
            Gaussian jitter, unless ``organ`` is given.
        organ: draw centres uniformly inside this ellipsoid instead, far enough from its surface.
        within: tissues a lesion may replace (it is clipped to them).
        background: tissue whose SUV is the lesion's local background.
        max_radius_mm: largest lesion radius that fits.
    """

    name: str
    start: Vec3
    end: Vec3
    spread_mm: float
    within: tuple[str, ...]
    background: str
    max_radius_mm: float
    organ: Ellipsoid | None = None

    @property
    def category(self) -> str:
        return self.name.split("_", 1)[0]


# Lymph-node stations of the trunk in cavity fractions (u, v, w); thoracic ones may touch lung.
_NODE_STATIONS: dict[str, Vec3] = {
    "mediastinal": (0.0, 0.35, 0.82),
    "hilar_right": (-0.22, 0.05, 0.75),
    "hilar_left": (0.3, 0.05, 0.77),
    "axillary_right": (-0.95, 0.1, 0.88),
    "axillary_left": (0.95, 0.1, 0.88),
    "paraaortic_right": (-0.15, -0.3, 0.42),
    "paraaortic_left": (0.25, -0.3, 0.45),
    "iliac_right": (-0.33, 0.15, 0.13),
    "iliac_left": (0.33, 0.15, 0.13),
    "inguinal_right": (-0.5, 0.55, 0.02),
    "inguinal_left": (0.5, 0.55, 0.02),
}
_PRIMARY_TISSUES = ("muscle", "fat", "tonsil", "airway", "salivary")
# Head-and-neck sites: name, offset from the chin (mm at size 1, x towards the side), largest radius.
_HEAD_NECK_SITES = (
    ("gtvp_tonsil", (13.0, 20.0, 25.0), 22.0),
    ("gtvn_level2", (36.0, 8.0, -8.0), 18.0),
    ("gtvn_level3", (38.0, 12.0, -40.0), 15.0),
    ("gtvn_level4", (38.0, 18.0, -72.0), 12.0),
)


def _organ_site(
    name: str, organ: Ellipsoid, within: tuple[str, ...], background: str, max_radius_mm: float
) -> Site:
    return Site(name, organ.centre, organ.centre, 0.0, within, background, max_radius_mm, organ)


MIMIC_INDEX_BASE = 64
"""Tissue indices of mimics (each with its core) start here, after the lesions'."""
# Brown fat: supraclavicular and paravertebral fat, and the thoracic and para-aortic node stations.
_BROWN_FAT_STATIONS: dict[str, Vec3] = {
    "supraclavicular_right": (-0.7, 0.0, 0.96),
    "supraclavicular_left": (0.7, 0.0, 0.96),
    "paravertebral_right": (-0.3, -0.72, 0.72),
    "paravertebral_left": (0.3, -0.72, 0.72),
    **{name: _NODE_STATIONS[name] for name in ("mediastinal", "axillary_right", "axillary_left")},
    **{name: _NODE_STATIONS[name] for name in ("paraaortic_right", "paraaortic_left")},
}


def mimic_sites(body: Body) -> list[Site]:
    """Where CT-only-separable mimics grow: brown fat (in fat only), focal uptake in the back muscles
    (in muscle only) and in a bowel loop (in bowel only). Their largest radius is a node's."""
    s = body.frame.size
    sites = [
        Site(f"brownfat_{where}", point, point, 6.0 * s, ("fat",), "fat", 20.0 * s)
        for where, point in ((where, body.point(*uvw)) for where, uvw in _BROWN_FAT_STATIONS.items())
    ]
    for sign, side in ((-1, "right"), (1, "left")):
        start, end = body.point(0.2 * sign, -0.9, 0.35), body.point(0.2 * sign, -0.9, 0.8)
        sites.append(Site(f"muscle_back_{side}", start, end, 4.0 * s, ("muscle",), "muscle", 20.0 * s))
    for k, (loop, _) in enumerate(body.bowel_loops):
        sites.append(_organ_site(f"bowel_{k}", loop, ("bowel",), "bowel", 20.0 * s))
    return sites


def lesion_sites(body: Body) -> list[Site]:
    """Every lesion site of this body: lungs, liver, lymph-node stations, bone and, with a head,
    head-and-neck primaries (GTVp: tonsils, larynx) and cervical nodes (GTVn: levels II–IV)."""
    f, s = body.frame, body.frame.size
    sites = []
    for name in ("lung_right", "lung_left", "liver"):
        organ, tissue = body.organ(name), organ_tissue(name)
        sites.append(_organ_site(name, organ, (tissue,), tissue, 0.8 * min(organ.semi_axes)))
    for name in ("iliac_right", "iliac_left"):
        sites.append(_organ_site(f"bone_{name}", body.organ(name), BONE_TISSUES, "bone_marrow", 18.0 * s))
    for where, (u, v, w) in _NODE_STATIONS.items():
        within = (*SOFT_TISSUES, "lung") if where.startswith(("mediastinal", "hilar")) else SOFT_TISSUES
        point = body.point(u, v, w)
        sites.append(Site(f"node_{where}", point, point, 6.0 * s, within, "fat", 20.0 * s))
    spine = [(f.centre_x, body.spine_y, f.pelvic_floor_z + w * f.trunk_length) for w in (0.2, 0.95)]
    sites.append(Site("bone_spine", spine[0], spine[1], 2.0 * s, BONE_TISSUES, "bone_marrow", 22.0 * s))
    if f.with_head:
        for name, (dx, dy, dz), radius in _HEAD_NECK_SITES:
            within, background = (
                (_PRIMARY_TISSUES, "muscle") if name.startswith("gtvp") else (SOFT_TISSUES, "fat")
            )
            for sign, side in ((1, "right"), (-1, "left")):
                point = body.head_point(sign * dx, dy, dz)
                sites.append(Site(f"{name}_{side}", point, point, 5.0 * s, within, background, radius * s))
        larynx = body.head_point(0.0, 24.0, -35.0)
        sites.append(Site("gtvp_larynx", larynx, larynx, 4.0 * s, _PRIMARY_TISSUES, "muscle", 18.0 * s))
    return sites


@dataclass(frozen=True)
class LesionParams:
    """One lesion: its site, class label, shape, optional necrotic core and appearance."""

    site: str
    label: int
    diameter_mm: float
    shape: Shape
    within: tuple[str, ...]
    hu: float
    suv: float
    core: Ellipsoid | None = None
    core_hu: float = 0.0
    core_suv: float = 0.0


def lesion_paints(k: int, lesion: LesionParams, base: int = LESION_INDEX_BASE) -> list[Paint]:
    """Painting steps of lesion (or, with ``base=MIMIC_INDEX_BASE``, mimic) number ``k``: its body,
    then its necrotic core."""
    within = tuple(TISSUE_INDEX[name] for name in lesion.within)
    steps = [Paint(lesion.shape, base + 2 * k, within)]
    if lesion.core is not None:
        steps.append(Paint(lesion.core, base + 2 * k + 1, (base + 2 * k,)))
    return steps


def _lesion_shape(rng: np.random.Generator, centre: np.ndarray, radius: float) -> Shape:
    """A lobulated sphere or a union of two or three ellipsoids, about ``2 * radius`` across."""
    if rng.random() < 0.5:
        harmonics = tuple(
            (tuple(_unit(rng)), int(rng.integers(2, 5)), float(rng.choice([-1, 1]) * rng.uniform(0.05, 0.18)))
            for _ in range(3)
        )
        return Lobulated(tuple(centre.tolist()), radius, harmonics)  # type: ignore[arg-type]
    parts = [
        Ellipsoid(tuple(centre.tolist()), tuple(radius * rng.uniform(0.7, 1.0, 3)), random_rotation(rng))
    ]
    for _ in range(int(rng.integers(1, 3))):
        offset = centre + _unit(rng) * radius * rng.uniform(0.3, 0.6)
        semi = tuple(radius * rng.uniform(0.45, 0.75, 3))
        parts.append(Ellipsoid(tuple(offset.tolist()), semi, random_rotation(rng)))  # type: ignore[arg-type]
    return Union(tuple(parts))  # type: ignore[arg-type]


def _unit(rng: np.random.Generator) -> np.ndarray:
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


def _lesion_centre(rng: np.random.Generator, site: Site, radius: float) -> np.ndarray:
    """A centre in the site: inside its organ, at least ``radius`` from the surface, or on its
    segment with Gaussian spread."""
    if site.organ is None:
        start, end = np.asarray(site.start), np.asarray(site.end)
        return start + rng.random() * (end - start) + rng.normal(0.0, site.spread_mm, 3)
    organ = site.organ
    reach = max(0.1, 1.0 - radius / min(organ.semi_axes) - 0.1)
    local = _unit(rng) * reach * rng.random() ** (1 / 3) * np.asarray(organ.semi_axes)
    rows = np.eye(3) if organ.axes is None else np.asarray(organ.axes)
    return np.asarray(organ.centre) + rows.T @ local


def _lesion_hu(rng: np.random.Generator, category: str, hu: np.ndarray) -> float:
    """Mean CT of a lesion in HU: visible in lung and fat, barely in liver and muscle."""
    if category == "lung":
        return rng.uniform(20.0, 50.0)
    if category == "liver":
        return float(hu[TISSUE_INDEX["liver"]]) - rng.uniform(5.0, 20.0)
    if category == "bone":
        return rng.uniform(40.0, 150.0) if rng.random() < 0.6 else rng.uniform(500.0, 900.0)
    if category == "gtvp":
        return rng.uniform(40.0, 60.0)
    return rng.uniform(25.0, 50.0)


def lesion_fits(
    grid: Grid, steps: list[Paint], lesion: LesionParams, k: int, base: int = LESION_INDEX_BASE
) -> bool:
    """Whether lesion (or mimic) ``k`` keeps at least 30 % of its nominal volume (and one voxel) on
    the CT grid once clipped to its tissues; rendered only inside the lesion's bounding box."""
    window = grid.window(*lesion.shape.bounds())
    if window is None:
        return False
    tissues = render(grid.crop(window), [*steps, *lesion_paints(k, lesion, base)])
    voxels = int(np.count_nonzero(tissues == base + 2 * k))
    nominal = math.pi / 6 * lesion.diameter_mm**3 / math.prod(grid.spacing_mm)
    return voxels >= max(1.0, 0.3 * nominal)


def draw_lesion(
    rng: np.random.Generator,
    site: Site,
    diameter_mm: float,
    excess_suv: float,
    label: int,
    tables: tuple[np.ndarray, np.ndarray],
) -> LesionParams:
    """Draw a lesion's centre, shape, optional necrotic core (a quarter of those over 25 mm) and
    appearance at a site.

    Args:
        rng: random generator.
        site: where it grows.
        diameter_mm: nominal diameter (capped by the site).
        excess_suv: SUV above the site's background uptake.
        label: mask value.
        tables: the case's ``hu`` and ``suv`` tissue look-up tables.
    """
    hu, suv = tables
    radius = min(diameter_mm / 2, site.max_radius_mm)
    centre = _lesion_centre(rng, site, radius)
    background = float(suv[TISSUE_INDEX[site.background]])
    lesion_hu = _lesion_hu(rng, site.category, hu)
    core = None
    if 2 * radius > 25.0 and rng.random() < 0.25:
        core = Ellipsoid(tuple(centre.tolist()), (0.45 * radius,) * 3)  # type: ignore[arg-type]
    return LesionParams(
        site=site.name, label=label, diameter_mm=2 * radius, shape=_lesion_shape(rng, centre, radius),
        within=site.within, hu=lesion_hu, suv=background + excess_suv, core=core,
        core_hu=lesion_hu - 20.0, core_suv=background + 0.2 * excess_suv,
    )  # fmt: skip


def draw_mimic(
    rng: np.random.Generator,
    site: Site,
    diameter_mm: float,
    excess_suv: float,
    tables: tuple[np.ndarray, np.ndarray],
) -> LesionParams:
    """A mimic at a site of :func:`mimic_sites`: drawn by :func:`draw_lesion` (same centre, shape,
    core and uptake rules), label 0, and the CT of the one tissue it replaces (no mass)."""
    lesion = draw_lesion(rng, site, diameter_mm, excess_suv, 0, tables)
    host_hu = float(tables[0][TISSUE_INDEX[site.within[0]]])
    return replace(lesion, hu=host_hu, core_hu=host_hu)
