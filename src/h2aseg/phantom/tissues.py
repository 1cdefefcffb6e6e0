"""The tissues of the synthetic PET/CT phantom: each tissue's HU and SUV ranges and its index in the
per-voxel tissue map (lesions and mimics take indices from :data:`LESION_INDEX_BASE` up)."""

from __future__ import annotations

TISSUES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    # name: ((HU low, HU high), (SUV low, SUV high)); values drawn per case within the ranges.
    "air": ((-1000.0, -1000.0), (0.0, 0.0)),
    "fat": ((-110.0, -85.0), (0.2, 0.4)),
    "muscle": ((40.0, 55.0), (0.5, 0.9)),
    "lung": ((-850.0, -780.0), (0.3, 0.6)),
    "airway": ((-1000.0, -960.0), (0.0, 0.05)),
    "blood": ((35.0, 50.0), (1.3, 2.1)),
    "myocardium": ((40.0, 55.0), (1.5, 12.0)),
    "liver": ((50.0, 68.0), (1.8, 2.8)),
    "spleen": ((40.0, 52.0), (1.5, 2.3)),
    "kidney": ((28.0, 40.0), (2.0, 4.5)),
    "renal_pelvis": ((0.0, 15.0), (4.0, 12.0)),
    "bladder": ((0.0, 15.0), (16.0, 50.0)),
    "bowel": ((15.0, 40.0), (1.2, 3.5)),
    "bowel_gas": ((-900.0, -600.0), (0.0, 0.1)),
    "bone_cortical": ((700.0, 1100.0), (0.3, 0.6)),
    "bone_marrow": ((180.0, 320.0), (1.2, 2.0)),
    "disc": ((70.0, 110.0), (0.4, 0.8)),
    "csf": ((0.0, 15.0), (0.1, 0.4)),
    "brain_grey": ((35.0, 45.0), (5.0, 11.0)),
    "brain_white": ((25.0, 32.0), (2.0, 4.0)),
    "tonsil": ((40.0, 60.0), (2.5, 6.0)),
    "salivary": ((-20.0, 20.0), (1.5, 3.2)),
    "thyroid": ((80.0, 120.0), (1.0, 2.5)),
    "eye": ((5.0, 15.0), (0.2, 0.5)),
}
TISSUE_INDEX: dict[str, int] = {name: index for index, name in enumerate(TISSUES)}
LESION_INDEX_BASE = 32
"""Lesion tissues (each lesion and each necrotic core has its own HU and SUV) start here."""
BONE_TISSUES = ("bone_cortical", "bone_marrow", "disc")
SOFT_TISSUES = ("fat", "muscle")
