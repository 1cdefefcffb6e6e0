"""Whole-body prediction speed and memory on this machine (``benchmarks/predict_speed.py``).

Two measurements, each meant for a fresh process:

- :func:`measure_windows` — sliding-window throughput of ``Predictor.predict_volume`` with and
  without the 8-flip TTA: windows per second, where a window is one sliding-window position under
  one flip (the work is the same whatever the implementation, so before/after are comparable).
- :func:`measure_predict` — the whole ``predict`` of one whole-body study (reading, preprocessing,
  the network, resampling back, NIfTI, lesion report, picture), the time of each stage (cProfile
  cumulative times) and the peak resident memory (``ru_maxrss``) of the process.

Only the public API of ``Predictor`` is used, so the same code measures earlier versions.
"""

from __future__ import annotations

import cProfile
import pstats
import resource
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import torch
from monai.data.utils import dense_patch_slices, get_valid_patch_size

from h2aseg.inference.predictor import Predictor
from h2aseg.models import build_model
from h2aseg.pipeline.predict import predict

STAGES = {
    "read and preprocess": "compose.py:__call__",
    "network (sliding window)": "predictor.py:predict_volume",
    "resample to the source grid": "restore.py:restore_to_original",
    "write NIfTI": "io.py:save_nifti_like",
    "lesion table": "quantify.py:lesion_table",
    "picture": "viz/figures.py:save_nifti_case_figure",
}


def window_count(shape: tuple[int, ...], roi_size: tuple[int, ...], overlap: float) -> int:
    """Sliding-window positions MONAI visits on a volume of ``shape`` (after padding to the roi)."""
    padded = tuple(max(s, r) for s, r in zip(shape, roi_size, strict=True))
    roi = get_valid_patch_size(padded, roi_size)
    scan = [int(r * (1 - overlap)) or 1 for r in roi]
    return len(dense_patch_slices(padded, roi, scan))


def air_window_fraction(
    image: torch.Tensor, roi_size: tuple[int, ...], overlap: float, levels: tuple[float, float]
) -> float:
    """Share of the window positions of ``image`` ``(2, X, Y, Z)`` with no voxel above ``levels``."""
    shape = tuple(image.shape[1:])
    roi = get_valid_patch_size(shape, roi_size)
    scan = [int(r * (1 - overlap)) or 1 for r in roi]
    slices = dense_patch_slices(shape, roi, scan)
    body = (image[0] > levels[0]) | (image[1] > levels[1])
    return sum(not bool(body[s].any()) for s in slices) / len(slices)


def measure_windows(
    image: torch.Tensor, config: dict[str, Any], tta: bool, overlap: float, sw_batch_size: int
) -> dict[str, Any]:
    """Times ``predict_volume`` once (after a one-window warm-up) on a ``(2, X, Y, Z)`` image.

    Args:
        image: preprocessed ``(2, X, Y, Z)`` volume.
        config: run config with ``model``, ``preprocess`` (patch size) sections.
        tta: the 8-flip TTA or none.
        overlap: sliding-window overlap.
        sw_batch_size: windows per forward pass.
    """
    torch.manual_seed(0)
    model_config = dict(config["model"])
    model = build_model(model_config.pop("name"), **model_config)
    predictor = Predictor(model, config, "cpu", overlap=overlap, sw_batch_size=sw_batch_size, tta=tta)
    roi = predictor.roi_size
    predictor.predict_volume(torch.zeros(1, 2, *roi))  # warm-up (allocator, kernels)
    start = time.perf_counter()
    probabilities = predictor.predict_volume(image[None])
    seconds = time.perf_counter() - start
    windows = window_count(tuple(image.shape[1:]), roi, overlap) * (8 if tta else 1)
    return {
        "shape": list(image.shape[1:]),
        "roi": list(roi),
        "tta_flips": 8 if tta else 1,
        "overlap": overlap,
        "sw_batch_size": sw_batch_size,
        "windows": windows,
        "seconds": round(seconds, 2),
        "windows_per_second": round(windows / seconds, 2),
        "lesion_voxels": int((probabilities[0, -1] >= 0.5).sum()),
    }


def measure_predict(checkpoint: Path, ct: Path, pet: Path, out_dir: Path, **options: Any) -> dict[str, Any]:
    """Runs ``predict`` on one study under cProfile; seconds per stage and peak host memory.

    Args:
        checkpoint: model checkpoint.
        ct, pet: the study (NIfTI, HU and SUV).
        out_dir: output folder.
        options: keyword arguments of :func:`h2aseg.inference.predictor.predict`.
    """
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    results = predict(checkpoint, out_dir, ct=ct, pet=pet, device="cpu", **options)
    profile.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    stages = {}
    for stage, pattern in STAGES.items():
        file_part, function = pattern.split(":")
        cumulative = [
            value[3]
            for (path, _, name), value in stats.items()
            if path.endswith(file_part) and name == function
        ]
        stages[stage] = round(max(cumulative), 2) if cumulative else None
    return {
        "seconds_total": round(total, 2),
        "seconds_by_stage": stages,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
        "source_shape": list(nib.load(pet).shape),
        "lesions": results[0].summary["lesion_count"],
    }
