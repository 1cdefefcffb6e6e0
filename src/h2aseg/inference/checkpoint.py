"""Checkpoints: build the network a config describes (training uses the same builder) and load its weights.

A checkpoint is a Lightning ``.ckpt`` that loads with ``weights_only=True``: the resolved config
under ``hyper_parameters["config"]`` and the network weights under the ``model.`` prefix of
``state_dict`` (``docs/internals.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from h2aseg.config import checkpoint_config
from h2aseg.errors import checkpoint_load_error
from h2aseg.io import first_line
from h2aseg.models import build_model

logger = logging.getLogger(__name__)


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """Build ``config["model"]`` (``name`` plus keyword arguments of ``build_model``) and check that its
    outputs fit ``config["classes"]``.

    Raises:
        ValueError: unknown model, bad argument, or output channels that do not fit the classes.
    """
    arguments = dict(config["model"])
    name = arguments.pop("name")
    try:
        model = build_model(name, **arguments)
    except TypeError as error:
        raise ValueError(f"model {name!r}: bad argument in config section model ({error})") from error
    n_classes = len(config["classes"])
    if model.output_activation == "sigmoid" and (model.out_channels != 1 or n_classes != 2):
        raise ValueError(f"model {name!r} has a sigmoid output: it needs out_channels=1 and two classes")
    if model.output_activation == "softmax" and model.out_channels != n_classes:
        raise ValueError(
            f"model {name!r} has {model.out_channels} output channels but config classes has {n_classes} "
            f"entries; set model.out_channels={n_classes}"
        )
    return model


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The network of a checkpoint with its weights loaded, and its resolved config (plain dicts).

    Raises:
        ValueError: missing or unreadable file, no config, or weights of another model.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types (pickle, zip, EOF, runtime)
        raise ValueError(f"{path}: {checkpoint_load_error(error)}") from error
    saved = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    config = checkpoint_config(saved, str(path))
    name = config["model"]["name"]
    try:
        model = build_network(config)
    except ValueError as error:
        raise ValueError(f"{path}: cannot build model {name!r} ({first_line(error)})") from error
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: no state_dict")
    weights = {
        key.removeprefix("model."): value for key, value in state_dict.items() if key.startswith("model.")
    }
    _load_weights(model, weights, path, name)
    logger.info("loaded %s (%s) from %s", name, type(model).__name__, path)
    return model, config


def _load_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """``load_state_dict`` with a one-line error that says how the weights differ."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if missing or unexpected or reshaped:
        example = (missing or unexpected or reshaped)[0]
        raise ValueError(
            f"{path}: its weights do not fit model {name!r} ({len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(reshaped)} of another shape, e.g. {example!r}); a checkpoint of another model?"
        )
    model.load_state_dict(weights)
