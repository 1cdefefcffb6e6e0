"""CT-only-separable mimics of the phantom: PET like a lesion, CT like the tissue they sit in."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from h2aseg.phantom.anatomy import LESION_INDEX_BASE, TISSUE_INDEX
from h2aseg.phantom.cohort import make_phantom_case
from h2aseg.phantom.lesions import MIMIC_INDEX_BASE
from h2aseg.phantom.sampling import PRESETS, sample_case_parameters

WITH_MIMICS = dataclasses.replace(PRESETS["small"], mimics_per_case=1.5)
# Background tissue of each lesion category (the tissue whose SUV the excess is added to).
HOST = {"lung": "lung", "liver": "liver", "node": "fat", "bone": "bone_marrow"}


def _excess(params, item) -> float:
    """SUV above the site's background: what the preset's ``excess_suv`` distribution drew."""
    category = item.site.split("_")[0]
    background = {"brownfat": "fat", "muscle": "muscle", "bowel": "bowel", **HOST}[category]
    return float(item.suv - params.suv[TISSUE_INDEX[background]])


def test_mimics_have_the_lesions_pet_distribution() -> None:
    """Lesions and mimics draw their SUV excess log-uniformly on [4, 12] and their diameter uniformly
    on [14, 40] mm (capped by the site): both match the closed-form mean of log(excess)."""
    drawn = [sample_case_parameters(seed, WITH_MIMICS) for seed in range(30)]
    low, high = WITH_MIMICS.excess_suv["default"]
    expected = (math.log(low) + math.log(high)) / 2
    spread = (math.log(high) - math.log(low)) / math.sqrt(12)
    for kind in ("lesions", "mimics"):
        items = [(params, item) for params in drawn for item in getattr(params, kind)]
        assert len(items) >= 20, kind
        excess = np.asarray([_excess(params, item) for params, item in items])
        assert excess.min() >= low - 1e-4 and excess.max() <= high + 1e-4, kind
        assert abs(np.log(excess).mean() - expected) < 3 * spread / math.sqrt(len(items)), kind
        diameters = np.asarray([item.diameter_mm for _, item in items])
        assert diameters.min() >= 0 and diameters.max() <= WITH_MIMICS.diameter_mm["default"][1], kind
    categories = {mimic.site.split("_")[0] for params in drawn for mimic in params.mimics}
    assert categories == {"brownfat", "muscle", "bowel"}


@pytest.mark.parametrize("seed", [1, 2])
def test_mimics_leave_the_ct_and_mask_unchanged(seed: int) -> None:
    """Mimics take the HU of the one tissue they replace and label 0: the CT and the mask of a case are
    identical with and without them, voxel for voxel, while the PET gains hot foci above SUV 2.5."""
    plain = make_phantom_case(seed, "small")
    mimicked = make_phantom_case(seed, WITH_MIMICS)
    assert mimicked.params.mimics, "the chosen seeds have mimics"
    np.testing.assert_array_equal(mimicked.ct_hu, plain.ct_hu)
    np.testing.assert_array_equal(mimicked.mask, plain.mask)
    for k, mimic in enumerate(mimicked.params.mimics):
        voxels = mimicked.tissues == MIMIC_INDEX_BASE + 2 * k
        host = mimic.within[0]
        assert mimic.within == (host,) and host in ("fat", "muscle", "bowel")
        assert mimic.hu == pytest.approx(float(mimicked.params.hu[TISSUE_INDEX[host]]))
        assert set(np.unique(plain.tissues[voxels])) == {TISSUE_INDEX[host]}
        # The classical PET-only rule calls the mimic a lesion, as it does the lesions.
        assert (mimicked.pet_suv[voxels] >= 2.5).mean() > 0.5
        assert (mimicked.pet_suv[voxels] > plain.pet_suv[voxels] + 1.0).mean() > 0.5


@pytest.mark.parametrize("seed", [1, 2])
def test_lesions_have_a_ct_correlate(seed: int) -> None:
    """Every lesion changes the CT of the tissue it grows in by at least 5 HU (a node is a 25-50 HU mass
    in -100 HU fat, a liver lesion is 5-20 HU hypodense), far beyond the noise of its mean."""
    case = make_phantom_case(seed, WITH_MIMICS)
    for k, lesion in enumerate(case.params.lesions):
        voxels = case.tissues == LESION_INDEX_BASE + 2 * k
        host_hu = float(case.params.hu[TISSUE_INDEX[HOST[lesion.site.split("_")[0]]]])
        difference = abs(float(case.ct_hu[voxels].mean()) - host_hu)
        assert difference >= 5.0 - 4 * case.params.ct_noise_hu / math.sqrt(voxels.sum())
        assert abs(lesion.hu - host_hu) >= 5.0
        assert (case.pet_suv[voxels] >= 2.5).mean() > 0.5
