"""Training input pipeline throughput (``h2aseg bench --pipeline``).

Measures what one data-loader worker delivers: training patches per second through the real path
(a case from the on-disk cache of preprocessed volumes → foreground/background crop → the config's
augmentation → collate), in this process, on one torch thread, as a DataLoader worker runs.
The cohort is the ``autopet`` phantom preset (400 × 400 × 360 voxels); the settings are the
``preprocess`` section of a run config (``configs/autopet.yaml`` by default). Phantoms and the
cache are kept in ``work_dir`` so a second run measures only the pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from monai.data import list_data_collate

from h2aseg.bench.cohort import DEFAULT_CONFIG, ensure_phantoms
from h2aseg.config import resolve_config, to_plain
from h2aseg.data.dataset import make_dataset
from h2aseg.data.layouts import read_dataset
from h2aseg.data.transforms import PreprocessConfig, train_transforms
from h2aseg.training.datamodule import EpochSeededDataset

logger = logging.getLogger(__name__)

RESULTS_NAME = "pipeline_cpu.json"


def measure_pipeline(
    data_root: Path,
    cache_dir: Path,
    preprocess: PreprocessConfig,
    batches: int,
    volumes_per_batch: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Times ``batches`` collated training batches drawn as one DataLoader worker draws them.

    Args:
        data_root: dataset folder (any layout with labels).
        cache_dir: on-disk cache of preprocessed cases (filled untimed first).
        preprocess: preprocessing, sampling and augmentation settings.
        batches: timed batches.
        volumes_per_batch: cases per batch (``trainer.batch_size``); each gives
            ``preprocess.samples_per_volume`` patches.
        seed: seed of the augmentation (per sample, as in training).

    Returns:
        Patches per second, seconds per batch (all and median), the patch's foreground fraction
        and the process's peak resident memory in GB.
    """
    torch.set_num_threads(1)
    items = [case.as_dict() for case in read_dataset(data_root, require_labels=True)]
    dataset = EpochSeededDataset(make_dataset(items, train_transforms(preprocess), cache_dir), seed=seed)
    warm_start = time.perf_counter()
    for index in range(len(items)):  # fills the cache: preprocessing is not what is measured
        dataset[index]
    logger.info("cache ready in %.1f s (%d cases)", time.perf_counter() - warm_start, len(items))
    seconds, patches, lesion_voxels, voxels = [], 0, 0, 0
    for step in range(batches):
        start = time.perf_counter()
        samples = [
            patch
            for k in range(volumes_per_batch)
            for patch in dataset[(1, (step * volumes_per_batch + k) % len(items))]
        ]
        batch = list_data_collate(samples)
        seconds.append(time.perf_counter() - start)
        patches += batch["image"].shape[0]
        lesion_voxels += int((batch["label"] > 0).sum())
        voxels += batch["label"].numel()
    total = sum(seconds)
    return {
        "patches_per_second_per_worker": round(patches / total, 3),
        "seconds_per_batch_median": round(statistics.median(seconds), 4),
        "seconds_per_batch": [round(s, 4) for s in seconds],
        "patches": patches,
        "patch_shape": list(batch["image"].shape[1:]),
        "foreground_fraction_of_patch_voxels": round(lesion_voxels / voxels, 5),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
    }


def run_pipeline_benchmark(
    out_dir: Path,
    work_dir: Path,
    label: str,
    config_path: Path = DEFAULT_CONFIG,
    n_cases: int = 2,
    batches: int = 20,
    preset: str = "autopet",
) -> dict[str, Any]:
    """Measures the pipeline and records it under ``label`` in ``out_dir/pipeline_cpu.json``.

    Earlier labels in the file are kept (``before`` and ``after`` of a change); the top-level
    ``patches_per_second_per_worker`` is the run just made.

    Args:
        out_dir: results folder.
        work_dir: folder for the phantoms and the preprocessed-case cache (kept between runs).
        label: name of this measurement (e.g. ``before``, ``after``).
        config_path: run config whose ``preprocess`` section is used.
        n_cases: phantom studies.
        batches: timed batches of ``trainer.batch_size`` volumes.
        preset: phantom preset (``autopet`` is 400 × 400 × 360; ``small`` for a smoke check).

    Returns:
        The whole results document written.
    """
    config = to_plain(resolve_config(config_path))
    preprocess = PreprocessConfig.from_dict(config["preprocess"])
    data_root = ensure_phantoms(Path(work_dir), n_cases, preset)
    result = measure_pipeline(
        data_root,
        Path(work_dir) / "cache",
        preprocess,
        batches=batches,
        volumes_per_batch=int(config["trainer"]["batch_size"]),
    )
    result.update(
        {
            "measured": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "config": str(config_path.name),
            "preset": preset,
            "cases": n_cases,
            "torch_threads": 1,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        }
    )
    logger.info("%s: %.2f patches/s per worker", label, result["patches_per_second_per_worker"])
    path = Path(out_dir) / RESULTS_NAME
    document = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    document["runs"][label] = result
    document["patches_per_second_per_worker"] = result["patches_per_second_per_worker"]
    document["latest"] = label
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    temporary.replace(path)
    return document


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()
