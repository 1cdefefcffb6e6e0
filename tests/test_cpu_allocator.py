"""glibc keeps freed activation memory after :func:`keep_freed_memory`: far fewer page faults per step."""

from __future__ import annotations

import platform

import pytest

from h2aseg.bench.allocator import step_costs


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_training_step_stops_page_faulting_its_activations() -> None:
    default, tuned = step_costs(tuned=False), step_costs(tuned=True)
    assert tuned["page_faults"] < default["page_faults"] / 5, (default, tuned)
