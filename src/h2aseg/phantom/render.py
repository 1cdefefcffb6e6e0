"""One synthetic PET/CT study in memory: drawn parameters rendered into CT, PET and mask volumes.

The cohort around it (layouts, seeds, the folder on disk) is :mod:`h2aseg.phantom.cohort`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from h2aseg.phantom.anatomy import body_paints
from h2aseg.phantom.sampling import CaseParams, Preset, PresetName, sample_case_parameters
from h2aseg.phantom.shapes import render, resample_to_grid
from h2aseg.phantom.tissues import TISSUE_INDEX

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class PhantomCase:
    """One synthetic study in memory.

    Attributes:
        patient_id: AutoPET-style patient id (``PETCT_`` + 10 hex digits), shared by the studies
            of one patient.
        ct_hu: CT in HU, float32 ``(X, Y, Z)`` on the CT grid.
        ct_affine: RAS affine ``(4, 4)`` of the CT grid (also the mask's grid).
        pet_suv: PET in body-weight SUV, float32 ``(X', Y', Z')`` on the PET grid.
        pet_affine: RAS affine ``(4, 4)`` of the PET grid.
        mask: true lesion extent, uint8 on the CT grid (1 = lesion; HECKTOR 1 = GTVp, 2 = GTVn).
        tissues: tissue index of each CT voxel (see :data:`h2aseg.phantom.tissues.TISSUES`).
        params: the parameters the case was rendered from.
    """

    patient_id: str
    ct_hu: np.ndarray
    ct_affine: np.ndarray
    pet_suv: np.ndarray
    pet_affine: np.ndarray
    mask: np.ndarray
    tissues: np.ndarray
    params: CaseParams

    @property
    def ct_spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.diag(self.ct_affine)[:3])  # type: ignore[return-value]

    @property
    def pet_spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.diag(self.pet_affine)[:3])  # type: ignore[return-value]

    def on_pet_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CT (HU, trilinear), PET (SUV) and mask (nearest), all on the PET grid."""
        if self.ct_hu.shape == self.pet_suv.shape and np.allclose(self.ct_affine, self.pet_affine):
            return self.ct_hu, self.pet_suv, self.mask
        ct = resample_to_grid(self.ct_hu, self.ct_affine, self.pet_affine, self.pet_suv.shape, 1, -1000.0)
        mask = resample_to_grid(self.mask, self.ct_affine, self.pet_affine, self.pet_suv.shape, 0, 0)
        return ct, self.pet_suv, mask


def _shift_voxels(volume: np.ndarray, shift: Sequence[int]) -> np.ndarray:
    """``out[i] = volume[i + shift]``, edges repeated (a whole-voxel misregistration)."""
    before = [max(-s, 0) for s in shift]
    padded = np.pad(volume, [(b, max(s, 0)) for b, s in zip(before, shift, strict=True)], mode="edge")
    window = tuple(slice(max(s, 0), max(s, 0) + n) for s, n in zip(shift, volume.shape, strict=True))
    return padded[window]


def _body_box(tissues: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the non-air voxels, grown by ``margin`` voxels (the whole grid if empty)."""
    box = []
    for axis in range(3):
        occupied = np.flatnonzero(tissues.any(axis=tuple(a for a in range(3) if a != axis)))
        if occupied.size == 0:
            return (slice(None),) * 3
        box.append(slice(max(int(occupied[0]) - margin, 0), int(occupied[-1]) + margin + 1))
    return tuple(box)


def _pet_acquisition(
    activity: np.ndarray, sigma_voxels: Sequence[float], params: CaseParams, rng: np.random.Generator
) -> np.ndarray:
    """Scanner blur and count noise of a true SUV map (float32 ``(X, Y, Z)``).

    Noise with variance proportional to the activity is added, then the scanner's Gaussian
    blur (``sigma_voxels``) is applied to both, so the noise is correlated as in a reconstructed
    image; its level makes the liver's coefficient of variation after the blur
    ``params.liver_noise_cv``.
    """
    impulse = np.zeros((33, 33, 33), dtype=np.float64)
    impulse[16, 16, 16] = 1.0
    kernel_energy = float((ndimage.gaussian_filter(impulse, sigma_voxels, mode="constant") ** 2).sum())
    liver = float(params.suv[TISSUE_INDEX["liver"]])
    gain = params.liver_noise_cv**2 * liver / kernel_energy  # variance = gain · SUV before the blur
    noise = rng.standard_normal(activity.shape, dtype=np.float32)
    noisy = activity + np.sqrt(np.float32(gain) * activity) * noise
    blurred = ndimage.gaussian_filter(noisy, sigma_voxels, mode="nearest")
    return np.maximum(blurred, 0.0, out=blurred)


def render_phantom(params: CaseParams) -> PhantomCase:
    """Render drawn parameters into CT, PET and mask volumes (deterministic)."""
    preset = params.preset
    paints = body_paints(params.body) + params.paints
    ct_grid = preset.ct_grid
    tissues = render(ct_grid, paints)
    if preset.pet_grid is None:
        pet_grid = ct_grid
        voxels = [round(d / s) for d, s in zip(params.pet_shift_mm, ct_grid.spacing_mm, strict=True)]
        pet_tissues = _shift_voxels(tissues, voxels)
    else:
        pet_grid = preset.pet_grid
        pet_tissues = render(pet_grid.shifted(params.pet_shift_mm), paints)
    rng = np.random.default_rng([params.seed, 3])
    sigma = [preset.pet_fwhm_mm / FWHM_PER_SIGMA / s for s in pet_grid.spacing_mm]
    # Noise and blur only inside the body's bounding box (plus the blur's reach): most of a
    # whole-body field of view is air, constant -1000 HU and 0 SUV.
    margin = int(np.ceil(4 * max(sigma))) + 2
    ct = np.full(tissues.shape, params.hu[0], dtype=np.float32)
    box = _body_box(tissues, margin)
    ct[box] = params.hu[tissues[box]] + params.ct_noise_hu * rng.standard_normal(
        ct[box].shape, dtype=np.float32
    )
    pet = np.zeros(pet_tissues.shape, dtype=np.float32)
    box = _body_box(pet_tissues, margin)
    pet[box] = _pet_acquisition(params.suv[pet_tissues[box]], sigma, params, rng)
    return PhantomCase(
        patient_id=params.patient_id,
        ct_hu=np.clip(ct, -1024.0, 3071.0, out=ct),
        ct_affine=ct_grid.affine,
        pet_suv=pet,
        pet_affine=pet_grid.affine,
        mask=params.label_of_tissue[tissues],
        tissues=tissues,
        params=params,
    )


def make_phantom_case(
    seed: int, preset: PresetName | Preset = "small", anatomy_seed: int | None = None
) -> PhantomCase:
    """Make one synthetic PET/CT study in memory (nothing is written).

    Args:
        seed: seed of the case; the same seed gives identical arrays.
        preset: ``small``, ``autopet``, ``hecktor`` or a custom :class:`Preset`.
        anatomy_seed: seed of the patient's body; studies of one patient share it (``None`` =
            ``seed``).

    Returns:
        The case: CT, PET and mask arrays on their grids with their affines.
    """
    return render_phantom(sample_case_parameters(seed, preset, anatomy_seed))
