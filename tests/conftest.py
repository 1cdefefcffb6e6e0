"""Suite-wide settings: one torch thread per test process, and the shared real-data folder.

``make test`` runs two pytest workers on a two-core machine; with torch's default of one
thread per core each, four threads would fight over two cores and the suite slows down several
times over (measured on the 2-core CI kind).

Real DICOM, vendor SUV and default-parity fixtures live in ``../shared/data`` beside the
repository (``H2ASEG_SHARED_DATA`` names another folder). Tests that need them take the
``shared_data`` fixture, which skips with the folder named when it is absent; CI has it and runs
them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(
    os.environ.get("H2ASEG_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; the test is skipped, naming the folder, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (set H2ASEG_SHARED_DATA to its path)")
    return SHARED_DATA
