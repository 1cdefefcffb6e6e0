"""Analytic shapes of the synthetic phantom, painted into a tissue-index volume on a voxel grid.

Every shape is a solid in RAS patient millimetres with a bounding box and a point-membership
test; :func:`render` evaluates each one only inside its own box, on open coordinate grids that
broadcast, so a whole-body grid renders in seconds without a loop over voxels. No library draws
analytic solids on arbitrary NIfTI grids (MONAI's synthetic generators make blobs on noise),
hence this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """A voxel grid with a diagonal RAS affine.

    Args:
        shape: voxels ``(X, Y, Z)``.
        spacing_mm: voxel size ``(3,)`` in mm.
        origin_mm: RAS position in mm of the centre of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing_mm: Vec3
    origin_mm: Vec3

    @property
    def affine(self) -> np.ndarray:
        """NIfTI affine ``(4, 4)``: voxel index → RAS mm."""
        affine = np.diag([*self.spacing_mm, 1.0])
        affine[:3, 3] = self.origin_mm
        return affine

    @property
    def extent_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """RAS mm of the first and the last voxel centre, each ``(3,)``."""
        low = np.asarray(self.origin_mm, dtype=float)
        return low, low + (np.asarray(self.shape) - 1) * np.asarray(self.spacing_mm)

    def shifted(self, offset_mm: Sequence[float]) -> Grid:
        """The same grid moved by ``offset_mm`` ``(3,)``."""
        origin = tuple(float(o + d) for o, d in zip(self.origin_mm, offset_mm, strict=True))
        return Grid(self.shape, self.spacing_mm, origin)  # type: ignore[arg-type]

    def window(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices whose centres lie in the box ``[low_mm, high_mm]``; ``None`` if empty."""
        origin, spacing = np.asarray(self.origin_mm), np.asarray(self.spacing_mm)
        first = np.maximum(np.ceil((low_mm - origin) / spacing), 0).astype(int)
        stop = np.minimum(np.floor((high_mm - origin) / spacing) + 1, self.shape).astype(int)
        if np.any(stop <= first):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(first, stop, strict=True))  # type: ignore[return-value]

    def crop(self, window: tuple[slice, slice, slice]) -> Grid:
        """The sub-grid of a window (same spacing, voxels aligned with this grid)."""
        origin = tuple(
            o + part.start * s for o, part, s in zip(self.origin_mm, window, self.spacing_mm, strict=True)
        )
        shape = tuple(part.stop - part.start for part in window)
        return Grid(shape, self.spacing_mm, origin)  # type: ignore[arg-type]

    def coordinates(self, window: tuple[slice, slice, slice]) -> tuple[np.ndarray, ...]:
        """Open RAS mm coordinates of a window: ``(nx, 1, 1)``, ``(1, ny, 1)``, ``(1, 1, nz)`` float32."""
        axes = []
        for axis, part in enumerate(window):
            values = self.origin_mm[axis] + self.spacing_mm[axis] * np.arange(part.start, part.stop)
            shape = [1, 1, 1]
            shape[axis] = values.size
            axes.append(values.astype(np.float32).reshape(shape))
        return tuple(axes)


class Shape(Protocol):
    """A solid in RAS mm: a bounding box and a point-membership test on broadcastable coordinates."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]: ...

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Ellipsoid:
    """Ellipsoid with semi-axes along ``axes`` (rows: unit vectors; ``None`` = the RAS axes), mm."""

    centre: Vec3
    semi_axes: Vec3
    axes: tuple[Vec3, Vec3, Vec3] | None = None

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        semi = np.asarray(self.semi_axes)
        half = semi if self.axes is None else np.sqrt(((np.asarray(self.axes).T * semi) ** 2).sum(axis=1))
        return np.asarray(self.centre) - half, np.asarray(self.centre) + half

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        offsets = (x - self.centre[0], y - self.centre[1], z - self.centre[2])
        rows = np.eye(3) if self.axes is None else np.asarray(self.axes)
        total = 0.0
        for row, semi in zip(rows, self.semi_axes, strict=True):
            local = sum(weight * offset for weight, offset in zip(row, offsets, strict=True) if weight != 0)
            total = total + (local / semi) ** 2
        return total <= 1.0


@dataclass(frozen=True)
class Tube:
    """Elliptic cross-sections along z, piecewise linear between knots (mm); optionally cut into
    slabs of ``duty`` × ``period_mm`` (vertebrae, discs)."""

    z_knots: tuple[float, ...]
    centre_x: tuple[float, ...]
    centre_y: tuple[float, ...]
    semi_x: tuple[float, ...]
    semi_y: tuple[float, ...]
    period_mm: float = 0.0
    duty: float = 1.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        cx, cy = np.asarray(self.centre_x), np.asarray(self.centre_y)
        ax, ay = np.asarray(self.semi_x), np.asarray(self.semi_y)
        low = [np.min(cx - ax), np.min(cy - ay), self.z_knots[0]]
        high = [np.max(cx + ax), np.max(cy + ay), self.z_knots[-1]]
        return np.asarray(low), np.asarray(high)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        def along(values: tuple[float, ...]) -> np.ndarray:
            return np.interp(z.ravel(), self.z_knots, values).astype(np.float32).reshape(z.shape)

        semi_x = np.maximum(along(self.semi_x), 1e-3)
        semi_y = np.maximum(along(self.semi_y), 1e-3)
        radius = ((x - along(self.centre_x)) / semi_x) ** 2 + ((y - along(self.centre_y)) / semi_y) ** 2
        return (radius <= 1.0) & _slab(z, self.z_knots[0], self.period_mm, self.duty)


@dataclass(frozen=True)
class Ring:
    """Elliptic band of radial ``thickness_mm`` between ``z_low`` and ``z_high`` (mm), optionally in
    periodic slabs (ribs), in front of ``y_min`` only (mandible) and open at the front midline
    over ``front_gap_mm`` (sternum)."""

    centre: tuple[float, float]
    semi_axes: tuple[float, float]
    thickness_mm: float
    z_low: float
    z_high: float
    period_mm: float = 0.0
    duty: float = 1.0
    y_min: float = -math.inf
    front_gap_mm: float = 0.0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.asarray(self.semi_axes) + self.thickness_mm
        low = [self.centre[0] - half[0], max(self.centre[1] - half[1], self.y_min), self.z_low]
        high = [self.centre[0] + half[0], self.centre[1] + half[1], self.z_high]
        return np.asarray(low), np.asarray(high)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy = x - self.centre[0], y - self.centre[1]
        rho = np.sqrt((dx / self.semi_axes[0]) ** 2 + (dy / self.semi_axes[1]) ** 2)
        band = np.abs(rho - 1.0) * min(self.semi_axes) <= self.thickness_mm / 2
        band &= (y >= self.y_min) & ~((np.abs(dx) < self.front_gap_mm) & (dy > 0))
        in_z = (z >= self.z_low) & (z <= self.z_high) & _slab(z, self.z_low, self.period_mm, self.duty)
        return band & in_z


@dataclass(frozen=True)
class Lobulated:
    """Sphere of radius ``radius_mm`` with a low-frequency radial perturbation: the radius along a
    unit direction ``d`` is ``R (1 + Σ a_k P_{n_k}(d · axis_k))`` (Legendre polynomials)."""

    centre: Vec3
    radius_mm: float
    harmonics: tuple[tuple[Vec3, int, float], ...]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = self.radius_mm * (1.0 + sum(abs(amplitude) for _, _, amplitude in self.harmonics))
        return np.asarray(self.centre) - half, np.asarray(self.centre) + half

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        distance = np.sqrt(dx**2 + dy**2 + dz**2) + np.float32(1e-6)
        scale = 1.0
        for axis, degree, amplitude in self.harmonics:
            cosine = (axis[0] * dx + axis[1] * dy + axis[2] * dz) / distance
            scale = scale + amplitude * _legendre(degree, cosine)
        return distance <= self.radius_mm * scale


@dataclass(frozen=True)
class Union:
    """Union of shapes (a lesion made of a few overlapping ellipsoids)."""

    parts: tuple[Shape, ...]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [part.bounds() for part in self.parts]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        result = self.parts[0].inside(x, y, z)
        for part in self.parts[1:]:
            result = result | part.inside(x, y, z)
        return result


@dataclass(frozen=True)
class Paint:
    """One painting step: voxels inside ``shape`` (and, if given, currently one of ``only_on``)
    become tissue ``tissue``."""

    shape: Shape
    tissue: int
    only_on: tuple[int, ...] | None = None


def _slab(z: np.ndarray, z_start: float, period_mm: float, duty: float) -> np.ndarray:
    """True where ``z`` lies in the first ``duty`` fraction of each ``period_mm`` from ``z_start``."""
    if period_mm <= 0 or duty >= 1:
        return np.ones(z.shape, dtype=bool)
    return np.mod(z - z_start, period_mm) < duty * period_mm


def _legendre(degree: int, t: np.ndarray) -> np.ndarray:
    """Legendre polynomial ``P_degree(t)`` for degrees 1–4."""
    polynomials = {
        1: lambda s: s,
        2: lambda s: 0.5 * (3 * s**2 - 1),
        3: lambda s: 0.5 * (5 * s**3 - 3 * s),
        4: lambda s: 0.125 * (35 * s**4 - 30 * s**2 + 3),
    }
    return polynomials[degree](t)


def rotation_about_z(angle_rad: float) -> tuple[Vec3, Vec3, Vec3]:
    """Rows of a rotation by ``angle_rad`` about the RAS z axis."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return ((c, s, 0.0), (-s, c, 0.0), (0.0, 0.0, 1.0))


def random_rotation(rng: np.random.Generator) -> tuple[Vec3, Vec3, Vec3]:
    """A uniformly random rotation (QR of a Gaussian matrix), as rows of unit vectors."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return tuple(tuple(float(v) for v in row) for row in q)  # type: ignore[return-value]


def render(grid: Grid, paints: Sequence[Paint]) -> np.ndarray:
    """Paint the steps in order into a tissue-index volume.

    Args:
        grid: the voxel grid.
        paints: painting steps, later ones over earlier ones.

    Returns:
        uint8 tissue indices ``grid.shape`` (0 = air).
    """
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for step in paints:
        low, high = step.shape.bounds()
        window = grid.window(low, high)
        if window is None:
            continue
        region = labels[window]
        inside = np.broadcast_to(step.shape.inside(*grid.coordinates(window)), region.shape)
        if step.only_on is not None:
            allowed = np.zeros(256, dtype=bool)
            allowed[list(step.only_on)] = True
            inside = inside & allowed[region]
        region[inside] = step.tissue
    return labels


def resample_to_grid(
    volume: np.ndarray,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: Sequence[int],
    order: int,
    fill: float,
) -> np.ndarray:
    """Resample a volume onto another grid of the same patient space.

    Args:
        volume: array ``(X, Y, Z)`` on the source grid.
        source_affine, target_affine: voxel → RAS mm affines ``(4, 4)``.
        target_shape: shape of the target grid.
        order: spline order (0 nearest for masks, 1 trilinear for images).
        fill: value outside the source field of view.

    Returns:
        The volume on the target grid, same dtype.
    """
    target_to_source = np.linalg.inv(source_affine) @ target_affine
    matrix = target_to_source[:3, :3]
    if np.allclose(matrix, np.diag(np.diag(matrix))):
        matrix = np.diag(matrix)  # scipy's faster separable path for diagonal grids
    resampled = ndimage.affine_transform(
        volume.astype(np.float32),
        matrix,
        target_to_source[:3, 3],
        tuple(target_shape),
        order=order,
        cval=fill,
    )
    return resampled.astype(volume.dtype)
