"""Prediction of a cohort across processes: each rank a disjoint share of the cases, one summary.

Ranks come from the environment that ``torchrun``, SLURM's ``srun`` through ``torchrun``, or
Lightning's launcher set (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). With more than one rank,
``torch.distributed`` is initialised (NCCL on GPUs, gloo on CPUs) only for the barrier before
rank 0 writes the cohort summary ``cohort_summary.csv`` from the cases' ``{case}_summary.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from h2aseg.io import write_text_atomic

logger = logging.getLogger(__name__)

T = TypeVar("T")
COHORT_SUMMARY = "cohort_summary.csv"
SUMMARY_COLUMNS = ("case_id", "lesion_count", "total_mtv_ml", "total_tlg", "suv_max")


@dataclass(frozen=True)
class Rank:
    """This process's place among the prediction processes.

    Attributes:
        rank: global rank, 0 … ``world_size - 1``.
        world_size: number of processes.
        local_rank: rank on this node (the GPU index to use).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Rank:
        """``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` of the launcher; one process when unset.

        Raises:
            ValueError: a value that is not an integer, or a rank outside ``0 … WORLD_SIZE - 1``.
        """
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            text = os.environ.get(name, str(default))
            try:
                values[name] = int(text)
            except ValueError as error:
                raise ValueError(f"environment variable {name}={text!r} is not an integer") from error
        rank = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if rank.world_size < 1 or not 0 <= rank.rank < rank.world_size:
            raise ValueError(f"RANK={rank.rank} must lie in 0..WORLD_SIZE-1 (WORLD_SIZE={rank.world_size})")
        return rank

    def share(self, items: Sequence[T]) -> list[T]:
        """Every ``world_size``-th item from ``rank``: disjoint shares that cover ``items``."""
        return list(items[self.rank :: self.world_size])

    def device(self, device: str) -> str:
        """``"auto"`` → this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else as given."""
        if device == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return device


def barrier(rank: Rank) -> None:
    """Waits for every rank; a process group made here (from the environment) is closed after."""
    if rank.world_size == 1:
        return
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=rank.rank, world_size=rank.world_size)
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[rank.local_rank % torch.cuda.device_count()])
    else:
        dist.barrier()
    if created:
        dist.destroy_process_group()


def write_cohort_summary(out_dir: Path, case_ids: Sequence[str]) -> Path:
    """``cohort_summary.csv``: one row of case totals per case written, from ``{case}_summary.json``.

    Cases without a summary (failed: each rank reports its own) are left out and counted in the log.
    """
    rows, missing = [], []
    for case_id in case_ids:
        path = Path(out_dir) / f"{case_id}_summary.json"
        if not path.is_file():
            missing.append(case_id)
            continue
        summary = json.loads(path.read_text())
        rows.append({column: summary.get(column) for column in SUMMARY_COLUMNS})
    if missing:
        logger.warning("cohort summary: %d case(s) without results left out: %s", len(missing), missing)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # A rerun that skips every complete case must leave the output folder as it was.
    target = write_text_atomic(Path(out_dir) / COHORT_SUMMARY, buffer.getvalue(), only_if_changed=True)
    logger.info("cohort summary of %d case(s): %s", len(rows), target)
    return target
