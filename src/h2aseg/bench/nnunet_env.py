"""The virtual environment that nnU-Net v2 runs in, apart from h2aseg's own (see
:mod:`h2aseg.bench.nnunet`): its interpreter, the installed version, creating it and requiring it."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

NNUNET_VERSION = "2.6.4"
"""The nnunetv2 release the benchmark was written and run against (the ``nnunet`` extra pins it)."""


def environment_python(env_dir: Path) -> Path:
    """The interpreter of the nnU-Net environment ``env_dir`` (a virtual environment)."""
    return Path(env_dir) / "bin" / "python"


def installed_version(env_dir: Path) -> str | None:
    """The nnunetv2 version installed in ``env_dir``, or ``None`` when there is none."""
    python = environment_python(env_dir)
    if not python.is_file():
        return None
    probe = "import importlib.metadata as m; print(m.version('nnunetv2'))"
    result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def make_environment(env_dir: Path, torch_requirement: str = "torch==2.13.0") -> str:
    """Create the nnU-Net environment (a virtual environment of its own) unless it exists; its version.

    nnU-Net stays out of h2aseg's environment: it pulls in torchvision (through timm), whose wheel
    does not match the pinned CPU torch and breaks Lightning's import there. ``torch_requirement``
    is installed first, so on a GPU machine pass the CUDA build's requirement.
    """
    version = installed_version(env_dir)
    if version is not None:
        return version
    logger.info("creating the nnU-Net environment in %s (nnunetv2==%s)", env_dir, NNUNET_VERSION)
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = [str(environment_python(env_dir)), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, torch_requirement], check=True)
    subprocess.run([*pip, f"nnunetv2=={NNUNET_VERSION}", torch_requirement], check=True)
    version = installed_version(env_dir)
    if version is None:
        raise RuntimeError(f"{env_dir}: nnunetv2 could not be installed")
    return version


def require_nnunet(env_dir: Path) -> str:
    """The nnunetv2 version of ``env_dir``; refuse with the command that makes it when it is missing."""
    version = installed_version(env_dir)
    if version is None:
        raise RuntimeError(
            f"{env_dir}: no nnU-Net environment; make it with `make nnunet-env` "
            f"(a virtual environment with nnunetv2=={NNUNET_VERSION})"
        )
    if version != NNUNET_VERSION:
        logger.warning("nnunetv2 %s installed; the benchmark was written for %s", version, NNUNET_VERSION)
    return version
