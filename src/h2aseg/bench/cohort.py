"""The whole-body phantom studies the pipeline and prediction benchmarks share."""

from __future__ import annotations

from pathlib import Path

from h2aseg.phantom.cohort import write_cohort

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
DEFAULT_CONFIG = CONFIGS / "autopet.yaml"


def ensure_phantoms(folder: Path, n_cases: int, preset: str = "autopet", seed: int = 0) -> Path:
    """The phantom cohort in ``folder`` (written once, autopet layout); returns its root."""
    root = Path(folder) / f"{preset}-{n_cases}-seed{seed}"
    if not (root / ".complete").is_file():
        write_cohort(root, n_cases, seed=seed, layout="autopet", preset=preset)
        (root / ".complete").write_text("written by h2aseg.bench.cohort\n")
    return root
