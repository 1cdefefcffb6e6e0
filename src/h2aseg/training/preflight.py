"""Checks made before a training run writes anything, and the guard that stops it on a non-finite loss.

* :func:`check_run_folder`: an output folder with checkpoints is continued (``resume``) or replaced
  (``overwrite``), never silently overwritten; ``resume`` needs the same network and data.
* :func:`check_training_data`: every case of ``data.root`` through :mod:`h2aseg.data.validate`.
* :func:`check_network`: the ``model`` section builds, the override or file at fault named.
* :class:`StopOnNonFiniteLoss`: the first NaN/inf loss ends the run with an error.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch.callbacks import Callback

from h2aseg.data.layouts import detect_layout, read_dataset
from h2aseg.data.validate import InputChecks, require_valid
from h2aseg.errors import checkpoint_load_error
from h2aseg.inference.checkpoint import build_network

logger = logging.getLogger(__name__)

RESUME_KEYS = (
    "seed",
    "model",
    "preprocess",
    "classes",
    "loss",
    "optim",
    "data.root",
    "data.layout",
    "data.split_file",
    "data.split_ratios",
    "data.fold",
    "data.n_folds",
    "data.target",
    "trainer.batch_size",
    "trainer.precision",
    "trainer.ema_decay",
)
"""Config keys (sections compared leaf by leaf) that ``resume`` must find unchanged: they change the
network, its optimisation or the data it sees."""
RUN_FILES = ("config.yaml", "split.json", "logs", "checkpoints")
"""What a run writes into ``output_dir`` (removed by ``overwrite``, and after a run that failed before
its first checkpoint)."""


class StopOnNonFiniteLoss(Callback):
    """Raises ``ValueError`` before the backward pass of the first NaN or infinite training loss."""

    def on_before_backward(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, loss: torch.Tensor
    ) -> None:
        """Check the loss of this step."""
        if not bool(torch.isfinite(loss.detach()).all()):
            raise ValueError(
                f"training loss is {loss.detach().float().item()} at epoch {trainer.current_epoch}, "
                f"step {trainer.global_step}: stopped (non-finite input, or too high optim.lr?)"
            )


def check_run_folder(config: Mapping[str, Any], checkpoint_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that holds checkpoints unless told how, and check a resume.

    Args:
        config: the resolved config of the new run.
        checkpoint_dir: ``output_dir/checkpoints``.
        resume: continue from ``last.ckpt``: its config must agree on :data:`RESUME_KEYS`.
        overwrite: replace the run (its files are removed by :func:`clear_run_folder` later).

    Raises:
        ValueError: ``output_dir`` is a file, both flags, checkpoints without either flag, no
            ``last.ckpt`` to resume, or a resume whose config differs (the dotted keys named).
    """
    output_dir = Path(config["output_dir"])
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"{output_dir}: output_dir is a file, not a folder")
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    found = sorted(path.name for path in checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
    if found and not (resume or overwrite):
        raise ValueError(
            f"{output_dir}: holds a run ({', '.join(found)}); continue it with --resume, replace it with "
            "--overwrite, or choose another output_dir"
        )
    if not resume:
        return
    last = checkpoint_dir / "last.ckpt"
    if not last.is_file():
        raise ValueError(f"{last}: no checkpoint to resume from (train once without --resume first)")
    saved = _checkpoint_config(last)
    differing = [key for key in _leaves(config) | _leaves(saved) if _differs(key, config, saved)]
    if differing:
        shown = ", ".join(sorted(differing)[:8])
        raise ValueError(
            f"{last}: --resume with a config that changes the network or data: {shown} "
            "(use the run's config.yaml, or start a new output_dir)"
        )


def clear_run_folder(output_dir: Path, keep: str | Path | None = None) -> None:
    """Remove what a run wrote into ``output_dir`` (:data:`RUN_FILES`) except ``keep`` (a given
    ``data.split_file`` may lie there); other files stay."""
    for name in RUN_FILES:
        path = Path(output_dir) / name
        if keep is not None and path.absolute() == Path(keep).absolute():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_training_data(config: Mapping[str, Any], allow_non_suv: bool, min_ct_coverage: float) -> None:
    """Validate every case of ``data.root`` (labels among the config's classes).

    Raises:
        ValueError: the first problem, naming the file (see :func:`h2aseg.data.validate.require_valid`).
    """
    data = config["data"]
    if data["root"] is None:
        raise ValueError("config data.root is not set: give the dataset folder (data.root=PATH)")
    root = Path(data["root"])
    layout = detect_layout(root) if data["layout"] == "auto" else data["layout"]
    cases = read_dataset(root, layout=layout)
    labels = {int(label) for label in config["classes"]}
    if data["target"] == "binary" and layout == "hecktor":
        labels.add(2)  # HECKTOR's GTVn, made lesion by the binary target
    checks = InputChecks(frozenset(labels), allow_non_suv, min_ct_coverage)
    require_valid(cases, checks)


def check_network(config: Mapping[str, Any], config_path: Path, overrides: Sequence[str]) -> None:
    """Build the network of ``config`` once; a failure names the ``model.*`` override or the file.

    Raises:
        ValueError: ``"model.channels=abc: ..."`` or ``"FILE: model section: ..."``.
    """
    try:
        build_network(dict(config))
    except (TypeError, ValueError) as error:
        blamed = [item for item in overrides if item.partition("=")[0].strip().startswith("model.")]
        where = ", ".join(blamed) if blamed else f"{config_path}: model section"
        name = config["model"].get("name")
        raise ValueError(
            f"{where}: cannot build model {name!r} ({str(error).strip().splitlines()[0]})"
        ) from error


def _checkpoint_config(path: Path) -> dict[str, Any]:
    """The resolved config stored in a checkpoint (loaded with ``weights_only=True``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch.load raises pickle, zip, EOF and runtime errors
        raise ValueError(f"{path}: {checkpoint_load_error(error)}") from error
    config = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: no resolved config under hyper_parameters")
    return config


def _leaves(config: Mapping[str, Any]) -> set[str]:
    """Dotted keys of the leaves of ``config`` under :data:`RESUME_KEYS`."""
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}")
        else:
            keys.add(prefix)

    for dotted in RESUME_KEYS:
        walk(_get(config, dotted), dotted)
    return keys


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part, node.get(int(part)) if part.isdigit() else None)
    return node


def _differs(dotted: str, new: Mapping[str, Any], saved: Mapping[str, Any]) -> bool:
    return _get(new, dotted) != _get(saved, dotted)
