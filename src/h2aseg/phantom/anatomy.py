"""Body plan of the synthetic PET/CT phantom: organs, bones, head and neck, lesion sites.

Trunk organs are placed in fractions of the body cavity: ``u`` (−1 patient right … +1 left) of
the cavity half-width, ``v`` (−1 posterior … +1 anterior) of its half-depth and ``w`` (0 pelvic
floor … 1 shoulders) of the trunk length, so one plan serves an adult whole body and the short
trunk of the ``small`` preset. Bones, vessels, the neck and the head are in millimetres scaled by
the body size. Everything is in RAS patient mm (x to the patient's right, y anterior, z superior).
The tissue table is :mod:`h2aseg.phantom.tissues` (its names are re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from h2aseg.phantom.shapes import (
    Ellipsoid,
    Paint,
    Ring,
    Shape,
    Tube,
    Vec3,
    random_rotation,
    rotation_about_z,
)
from h2aseg.phantom.tissues import BONE_TISSUES as BONE_TISSUES
from h2aseg.phantom.tissues import LESION_INDEX_BASE as LESION_INDEX_BASE
from h2aseg.phantom.tissues import SOFT_TISSUES as SOFT_TISSUES
from h2aseg.phantom.tissues import TISSUE_INDEX
from h2aseg.phantom.tissues import TISSUES as TISSUES

# name: (tissue, cavity-fraction centre (u, v, w), cavity-fraction semi-axes)
_ORGANS: dict[str, tuple[str, Vec3, Vec3]] = {
    "lung_right": ("lung", (-0.47, -0.05, 0.80), (0.40, 0.70, 0.17)),
    "lung_left": ("lung", (0.50, -0.05, 0.80), (0.37, 0.68, 0.16)),
    "heart": ("myocardium", (0.12, 0.20, 0.71), (0.30, 0.45, 0.09)),
    "liver": ("liver", (-0.38, 0.05, 0.60), (0.55, 0.70, 0.10)),
    "spleen": ("spleen", (0.60, -0.40, 0.61), (0.18, 0.28, 0.07)),
    "kidney_right": ("kidney", (-0.40, -0.50, 0.44), (0.16, 0.22, 0.085)),
    "kidney_left": ("kidney", (0.40, -0.50, 0.46), (0.16, 0.22, 0.085)),
    "bladder": ("bladder", (0.0, 0.30, 0.09), (0.28, 0.32, 0.065)),
    "iliac_right": ("bone_cortical", (-0.62, -0.30, 0.24), (0.10, 0.45, 0.10)),
    "iliac_left": ("bone_cortical", (0.62, -0.30, 0.24), (0.10, 0.45, 0.10)),
}
# Outline of the trunk: (w, half-width factor, half-depth factor, belly applies)
_TRUNK_OUTLINE = (
    (-0.03, 0.92, 0.85, False),
    (0.12, 1.00, 0.95, False),
    (0.30, 0.93, 0.95, True),
    (0.45, 0.90, 1.00, True),
    (0.60, 0.94, 0.97, False),
    (0.80, 1.00, 0.95, False),
    (0.94, 0.98, 0.88, False),
    (1.00, 0.80, 0.70, False),
)
# Head outline: (mm above the chin, half-width, half-depth), mm at size 1.
_HEAD_OUTLINE = ((0, 60, 72), (35, 70, 90), (95, 75, 97), (150, 71, 92), (190, 52, 68), (210, 10, 12))


@dataclass(frozen=True)
class BodyFrame:
    """Where the body lies and how big it is (mm); chosen per preset.

    Args:
        centre_x, centre_y: RAS mm of the body axis.
        pelvic_floor_z: RAS z (mm) of ``w = 0``.
        trunk_length: pelvic floor to shoulders, mm.
        half_width, half_depth: trunk outline semi-axes at the hips, mm.
        size: linear scale of bones, vessels, neck and head (1 = adult).
        with_head: draw the neck and the head above the shoulders.
        with_legs: draw the upper thighs below the pelvis.
    """

    centre_x: float
    centre_y: float
    pelvic_floor_z: float
    trunk_length: float
    half_width: float
    half_depth: float
    size: float
    with_head: bool
    with_legs: bool


@dataclass(frozen=True)
class Body:
    """One patient's anatomy: the frame plus wall thicknesses, organ jitter and bowel loops."""

    frame: BodyFrame
    fat_mm: float
    muscle_mm: float
    belly: float
    bladder_fill: float
    heart_angle_rad: float
    organ_jitter: tuple[tuple[str, Vec3], ...]
    bowel_loops: tuple[tuple[Ellipsoid, bool], ...]

    @property
    def cavity(self) -> tuple[float, float]:
        """Half-width and half-depth of the body cavity at the hips, mm."""
        wall = self.fat_mm + self.muscle_mm
        return self.frame.half_width - wall, self.frame.half_depth - wall

    def point(self, u: float, v: float, w: float) -> Vec3:
        """RAS mm of cavity fractions ``(u, v, w)``."""
        cavity_x, cavity_y = self.cavity
        f = self.frame
        return (f.centre_x - u * cavity_x, f.centre_y + v * cavity_y, f.pelvic_floor_z + w * f.trunk_length)

    def organ(self, name: str) -> Ellipsoid:
        """The ellipsoid of a trunk organ (see ``_ORGANS``), with this patient's jitter."""
        _, (u, v, w), (su, sv, sw) = _ORGANS[name]
        du, dv, dw = dict(self.organ_jitter).get(name, (0.0, 0.0, 0.0))
        cavity_x, cavity_y = self.cavity
        semi = (su * cavity_x, sv * cavity_y, sw * self.frame.trunk_length)
        if name == "bladder":
            semi = tuple(s * self.bladder_fill for s in semi)
        axes = None
        if name == "heart":
            axes = rotation_about_z(self.heart_angle_rad)
        elif name.startswith("iliac"):
            axes = rotation_about_z(math.copysign(0.45, -u))
        return Ellipsoid(self.point(u + du, v + dv, w + dw), semi, axes)  # type: ignore[arg-type]

    def z(self, w: float) -> float:
        """RAS z (mm) of the trunk fraction ``w``."""
        return self.frame.pelvic_floor_z + w * self.frame.trunk_length

    @property
    def spine_y(self) -> float:
        """RAS y of the vertebral-body axis, mm."""
        return self.frame.centre_y - 0.75 * self.cavity[1]

    @property
    def neck(self) -> tuple[float, float, float]:
        """RAS z of the shoulders and of the chin, and the y of the neck axis, mm."""
        f = self.frame
        top = f.pelvic_floor_z + f.trunk_length
        return top, top + 90.0 * f.size, f.centre_y - 0.1 * f.half_depth

    def head_point(self, dx: float, dy: float, dz: float) -> Vec3:
        """RAS mm of an offset (mm at size 1) from the chin on the neck axis."""
        _, chin, neck_y = self.neck
        s = self.frame.size
        return (self.frame.centre_x + dx * s, neck_y + dy * s, chin + dz * s)


def organ_tissue(name: str) -> str:
    """Tissue of a trunk organ of the body plan (``liver``, ``lung_left``...)."""
    return _ORGANS[name][0]


def sample_body(rng: np.random.Generator, frame: BodyFrame) -> Body:
    """Draw one patient's wall thicknesses, organ jitter and bowel loops around ``frame``."""
    fat = rng.uniform(8.0, 30.0) * frame.half_width / 170.0
    jitter = tuple((name, tuple(rng.uniform(-0.04, 0.04, 3).round(4))) for name in _ORGANS)
    body = Body(
        frame=frame,
        fat_mm=fat,
        muscle_mm=rng.uniform(10.0, 16.0) * frame.size,
        belly=rng.uniform(0.95, 1.2),
        bladder_fill=rng.uniform(0.7, 1.2),
        heart_angle_rad=rng.uniform(0.3, 0.7),
        organ_jitter=jitter,  # type: ignore[arg-type]
        bowel_loops=(),
    )
    loops = []
    for _ in range(int(rng.integers(5, 10))):
        centre = body.point(rng.uniform(-0.45, 0.5), rng.uniform(-0.1, 0.6), rng.uniform(0.17, 0.42))
        semi = (
            rng.uniform(12, 18) * frame.size,
            rng.uniform(12, 18) * frame.size,
            rng.uniform(25, 50) * frame.size,
        )
        loops.append((Ellipsoid(centre, semi, random_rotation(rng)), bool(rng.random() < 0.5)))  # type: ignore[arg-type]
    return replace(body, bowel_loops=tuple(loops))


def _paint(shape: Shape, tissue: str) -> Paint:
    return Paint(shape, TISSUE_INDEX[tissue])


def _rod(z: tuple[float, float], x: float, y: float, semi_x: float, semi_y: float | None = None) -> Tube:
    """A straight elliptic cylinder along z (vessels, airway, sternum, femur)."""
    return Tube(z, (x, x), (y, y), (semi_x, semi_x), (semi_y or semi_x,) * 2)


def _scaled(shape: Ellipsoid, margin_mm: float = 0.0, factor: float = 1.0) -> Ellipsoid:
    """The same ellipsoid with semi-axes ``factor * a - margin_mm`` (an inner wall or a core)."""
    semi = tuple(max(factor * a - margin_mm, 0.5 * factor * a) for a in shape.semi_axes)
    return Ellipsoid(shape.centre, semi, shape.axes)  # type: ignore[arg-type]


def _outline(body: Body, inset_mm: float, head_inset_mm: float) -> Tube:
    """Body outline shrunk by ``inset_mm`` (trunk, neck) and ``head_inset_mm`` (head)."""
    f = body.frame
    knots = []  # z, cx, cy, ax, ay
    for w, width, depth, belly in _TRUNK_OUTLINE:
        half_depth = depth * (body.belly if belly else 1.0) * f.half_depth
        knots.append(
            (body.z(w), f.centre_x, f.centre_y, width * f.half_width - inset_mm, half_depth - inset_mm)
        )
    if f.with_head:
        top, chin, neck_y = body.neck
        neck = 57.0 * f.size - min(inset_mm, 12.0 * f.size)
        knots += [(z, f.centre_x, neck_y, neck, neck) for z in (top + 10.0 * f.size, chin - 10.0 * f.size)]
        for dz, half_w, half_d in _HEAD_OUTLINE:
            x, y, z = body.head_point(0.0, 12.0, dz)
            knots.append((z, x, y, half_w * f.size - head_inset_mm, half_d * f.size - head_inset_mm))
    else:
        knots.append((body.z(1.08), f.centre_x, f.centre_y, 0.45 * f.half_width, 0.5 * f.half_depth))
    return Tube(*(tuple(float(k[i]) for k in knots) for i in range(5)))


def _cavity(body: Body) -> Tube:
    """The trunk's body cavity (inside the muscle wall), from ``w = 0.03`` to ``0.97``."""
    outline = _outline(body, body.fat_mm + body.muscle_mm, 0.0)
    z_low, z_high = body.z(0.03), body.z(0.97)
    z = np.asarray([z_low, *(k for k in outline.z_knots if z_low < k < z_high), z_high])
    names = ("centre_x", "centre_y", "semi_x", "semi_y")
    columns = (tuple(np.interp(z, outline.z_knots, getattr(outline, n)).tolist()) for n in names)
    return Tube(tuple(z.tolist()), *columns)


def _spine(body: Body) -> list[Paint]:
    """Vertebral bodies with discs, spinal canal and posterior arches, sacrum to skull base."""
    f, s = body.frame, body.frame.size
    _, chin, neck_y = body.neck
    z = [body.z(w) for w in (0.12, 0.4, 0.8, 1.0)] + ([chin + 35.0 * s] if f.with_head else [])
    y = [body.spine_y] * 4 + ([neck_y - 20.0 * s] if f.with_head else [])
    radius = np.asarray([24.0, 22.0, 17.0, 12.0, 9.0][: len(z)]) * s
    x, period = (f.centre_x,) * len(z), 0.055 * f.trunk_length

    def column(offset_y: np.ndarray, semi_x: np.ndarray, semi_y: np.ndarray, duty: float = 1.0) -> Tube:
        centre_y = tuple((np.asarray(y) + offset_y).tolist())
        return Tube(tuple(z), x, centre_y, tuple(semi_x.tolist()), tuple(semi_y.tolist()), period, duty)

    flat = np.ones(len(z))
    marrow = np.maximum(radius - 3.0 * s, 0.6 * radius)
    return [
        _paint(column(0 * flat, radius, radius), "bone_cortical"),
        _paint(column(0 * flat, marrow, marrow), "bone_marrow"),
        _paint(column(0 * flat, radius, radius, 0.2), "disc"),
        _paint(column(-radius - 6.0 * s, 7.0 * s * flat, 7.0 * s * flat), "csf"),
        _paint(column(-radius - 18.0 * s, 15.0 * s * flat, 8.0 * s * flat, 0.6), "bone_cortical"),
    ]


def _trunk_contents(body: Body) -> list[Paint]:
    """Lungs, heart, great vessels, abdominal organs, bowel, bladder and airway."""
    f, s = body.frame, body.frame.size
    cavity_x, cavity_y = body.cavity
    back = _rod(
        (body.z(0.0), body.z(1.0)), f.centre_x, f.centre_y - 0.9 * cavity_y, 0.38 * cavity_x, 0.3 * cavity_y
    )
    paints = [_paint(_cavity(body), "fat"), _paint(back, "muscle")]
    for side in (-1, 1):
        semi = (0.1 * cavity_x, 0.14 * cavity_y, 0.16 * f.trunk_length)
        paints.append(_paint(Ellipsoid(body.point(0.2 * side, -0.55, 0.3), semi), "muscle"))  # psoas
    paints += [_paint(body.organ(name), "lung") for name in ("lung_right", "lung_left")]
    aorta = _rod((body.z(0.28), body.z(0.74)), f.centre_x - 0.1 * cavity_x, body.spine_y + 35.0 * s, 11.0 * s)
    heart = body.organ("heart")
    paints += [_paint(aorta, "blood"), _paint(heart, "myocardium"), _paint(_scaled(heart, 10.0 * s), "blood")]
    paints += [_paint(body.organ(name), name) for name in ("liver", "spleen")]
    for name in ("kidney_right", "kidney_left"):
        kidney = body.organ(name)
        hilum_x = kidney.centre[0] - math.copysign(0.3 * kidney.semi_axes[0], kidney.centre[0] - f.centre_x)
        pelvis = Ellipsoid((hilum_x, *kidney.centre[1:]), tuple(0.4 * a for a in kidney.semi_axes))  # type: ignore[arg-type]
        paints += [_paint(kidney, "kidney"), _paint(pelvis, "renal_pelvis")]
    for loop, has_gas in body.bowel_loops:
        paints += [_paint(loop, "bowel")] + (
            [_paint(_scaled(loop, factor=0.5), "bowel_gas")] if has_gas else []
        )
    trachea = _rod((body.z(0.82), body.z(1.05)), f.centre_x, body.spine_y + 41.0 * s, 8.0 * s)
    return [*paints, _paint(body.organ("bladder"), "bladder"), _paint(trachea, "airway")]


def _trunk_bones(body: Body) -> list[Paint]:
    """Ribs, sternum, clavicles, iliac bones and femoral heads."""
    f, s = body.frame, body.frame.size
    cavity_x, cavity_y = body.cavity
    wall = body.muscle_mm / 2
    rib_semi = (cavity_x + wall, 0.95 * (cavity_y + wall))
    ribs = Ring(
        (f.centre_x, f.centre_y), rib_semi, 8.0 * s, body.z(0.6), body.z(0.95), 0.045 * f.trunk_length, 0.35
    )
    ribs = replace(ribs, front_gap_mm=0.15 * cavity_x)
    sternum = _rod(
        (body.z(0.72), body.z(0.94)), f.centre_x, f.centre_y + 0.95 * (cavity_y + wall), 14.0 * s, 6.0 * s
    )
    paints = [_paint(ribs, "bone_cortical"), _paint(sternum, "bone_cortical")]
    for side in (-1, 1):
        iliac = body.organ("iliac_right" if side > 0 else "iliac_left")
        x = f.centre_x + side * 0.35 * f.half_width
        clavicle_centre = (x, f.centre_y + 0.55 * f.half_depth, body.z(0.97))
        clavicle = Ellipsoid(
            clavicle_centre, (0.3 * f.half_width, 8.0 * s, 7.0 * s), rotation_about_z(side * 0.25)
        )
        hip = Ellipsoid(
            (f.centre_x + side * 0.45 * f.half_width, f.centre_y - 0.05 * f.half_depth, body.z(0.06)),
            (24.0 * s,) * 3,
        )
        paints += [_paint(iliac, "bone_cortical"), _paint(_scaled(iliac, 3.0 * s), "bone_marrow")]
        paints += [_paint(clavicle, "bone_cortical"), _paint(hip, "bone_cortical")]
        paints.append(_paint(_scaled(hip, 5.0 * s), "bone_marrow"))
    return paints


def _legs(body: Body) -> list[Paint]:
    """Upper thighs (fat, muscle, femur) below the pelvis."""
    f, s = body.frame, body.frame.size
    z = (f.pelvic_floor_z - 220.0 * s, body.z(0.06))
    half_w, half_d = 0.46 * f.half_width, 0.72 * f.half_depth
    paints = []
    for side in (-1, 1):
        x, femur_x = f.centre_x + side * 0.5 * f.half_width, f.centre_x + side * 0.47 * f.half_width
        paints += [
            _paint(_rod(z, x, f.centre_y, half_w, half_d), "fat"),
            _paint(_rod(z, x, f.centre_y, half_w - body.fat_mm, half_d - body.fat_mm), "muscle"),
            _paint(_rod(z, femur_x, f.centre_y, 14.0 * s), "bone_cortical"),
            _paint(_rod(z, femur_x, f.centre_y, 7.0 * s), "bone_marrow"),
        ]
    return paints


def _head_and_neck(body: Body) -> list[Paint]:
    """Skull, brain, eyes, mandible, pharynx, tonsils, salivary glands, thyroid, neck vessels."""
    s = body.frame.size
    top, chin, _ = body.neck
    point = body.head_point

    def ellipsoid(offset: Vec3, semi: Vec3) -> Ellipsoid:
        return Ellipsoid(point(*offset), tuple(a * s for a in semi))  # type: ignore[arg-type]

    skull = ellipsoid((0, 7, 125), (68.0, 88.0, 82.0))
    paints = [
        _paint(skull, "bone_cortical"),
        _paint(_scaled(skull, 7.0 * s), "brain_grey"),
        _paint(ellipsoid((0, 7, 130), (46, 62, 55)), "brain_white"),
        _paint(ellipsoid((0, -35, 78), (45, 26, 22)), "brain_grey"),  # cerebellum
    ]
    airway_x, airway_y, _ = point(0, 22, 0)
    airway_z = (top - 20.0 * s, *(chin + dz * s for dz in (5.0, 20.0, 45.0, 65.0)))
    semi_x, semi_y = ((r * s for r in radii) for radii in ((8, 9, 12, 11, 6), (8, 8, 10, 9, 6)))
    airway = Tube(airway_z, (airway_x,) * 5, (airway_y,) * 5, tuple(semi_x), tuple(semi_y))
    jaw_y = point(0, 15, 0)[1]
    mandible = Ring((airway_x, jaw_y), (48.0 * s, 62.0 * s), 9.0 * s, chin, chin + 30.0 * s, y_min=jaw_y)
    paints += [_paint(airway, "airway"), _paint(mandible, "bone_cortical")]
    for side in (-1, 1):
        thyroid = Ellipsoid(
            (point(side * 16, 0, 0)[0], point(0, 30, 0)[1], top + 25.0 * s), (8.0 * s, 10.0 * s, 20.0 * s)
        )
        vessel = _rod(
            (top - 10.0 * s, chin + 30.0 * s), point(side * 26, 0, 0)[0], point(0, 10, 0)[1], 5.0 * s
        )
        paints += [
            _paint(ellipsoid((side * 9, 7, 132), (5, 22, 12)), "csf"),
            _paint(ellipsoid((side * 32, 75, 105), (12, 12, 12)), "eye"),
            _paint(ellipsoid((side * 15, 22, 25), (8, 9, 13)), "tonsil"),
            _paint(ellipsoid((side * 50, -5, 45), (13, 20, 24)), "salivary"),
            _paint(ellipsoid((side * 30, 45, 2), (10, 13, 10)), "salivary"),
            _paint(thyroid, "thyroid"),
            _paint(vessel, "blood"),
        ]
    return paints


def body_paints(body: Body) -> list[Paint]:
    """The ordered painting steps of a whole patient (outline, walls, organs, bones, head)."""
    f = body.frame
    paints = [
        _paint(_outline(body, 0.0, 0.0), "fat"),
        _paint(_outline(body, body.fat_mm, 4.0 * f.size), "muscle"),
    ]
    paints += _legs(body) if f.with_legs else []
    paints += _trunk_contents(body) + _trunk_bones(body) + _spine(body)
    return paints + (_head_and_neck(body) if f.with_head else [])
