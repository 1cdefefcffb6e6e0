"""Run configs: load a YAML file, apply dotted ``key=value`` overrides, fill defaults, validate.

The schema is the one of ``docs/internals.md`` (section *Configs*); ``docs/training.md`` documents
every key. The resolved config is made of plain types only (dicts, lists, strings, numbers, booleans,
``None``) so that it can be stored inside a checkpoint that loads with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.yaml"


@dataclass(frozen=True)
class Field:
    """One leaf of the schema: the accepted types and the default (``None`` allowed if listed)."""

    types: tuple[type, ...]
    default: Any


_INT = (int,)
_FLOAT = (float,)
_STR = (str,)
_NONE = (type(None),)

# Sections whose keys are free: ``model`` holds keyword arguments of ``build_model``, ``preprocess``
# the fields of ``PreprocessConfig`` (checked by ``PreprocessConfig.from_dict``), ``classes`` the
# label names.
FREE_SECTIONS = ("model", "preprocess", "classes")

SCHEMA: dict[str, Any] = {
    "seed": Field(_INT, 0),
    "output_dir": Field(_STR, "runs/h2aseg"),
    "data": {
        "root": Field(_STR + _NONE, None),
        "layout": Field(_STR, "auto"),
        "split_file": Field(_STR + _NONE, None),
        "split_ratios": Field((list,), [6, 2, 2]),
        "fold": Field(_INT + _NONE, None),
        "n_folds": Field(_INT, 5),
        "target": Field(_STR, "binary"),
        "cache_dir": Field(_STR + _NONE, None),
        "cache_in_memory": Field((bool,), False),
        "num_workers": Field(_INT, 0),
    },
    "loss": {
        "deep_supervision_weights": Field((list, type(None)), [5, 4, 3, 2, 1]),
        "batch_dice": Field((bool,), False),
    },
    "optim": {
        "lr": Field(_FLOAT, 1.0e-4),
        "weight_decay": Field(_FLOAT, 1.0e-5),
        "lr_decay": Field(_FLOAT, 0.99),
        "schedule": Field(_STR, "exponential"),
    },
    "trainer": {
        "max_epochs": Field(_INT, 200),
        "max_time_minutes": Field(_FLOAT + _NONE, None),
        "batch_size": Field(_INT, 2),
        "val_every": Field(_INT, 5),
        "accelerator": Field(_STR, "auto"),
        "devices": Field(_INT + _STR + (list,), "auto"),
        "num_nodes": Field(_INT, 1),
        "strategy": Field(_STR, "auto"),
        "precision": Field(_STR + _INT, "32-true"),
        "limit_train_batches": Field(_INT + _FLOAT + _NONE, None),
        "limit_val_batches": Field(_INT + _FLOAT + _NONE, None),
        "log_every_n_steps": Field(_INT, 10),
        "ema_decay": Field(_FLOAT + _NONE, None),
    },
    "inference": {
        "sw_batch_size": Field(_INT, 2),
        "overlap": Field(_FLOAT, 0.5),
        "mode": Field(_STR, "gaussian"),
        "tta_flips": Field((bool,), False),
    },
    "model": {"name": "h2aseg"},
    "preprocess": {},
    "classes": {0: "background", 1: "lesion"},
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "data.target": ("binary", "multiclass"),
    "data.layout": ("auto", "autopet", "hecktor", "nnunet", "flat"),
    "inference.mode": ("gaussian", "constant"),
    "optim.schedule": ("exponential", "poly"),
}

# Sections that a config file or an override replaces as a whole instead of merging into the default.
_REPLACED_SECTIONS = ("classes",)

# Keys whose relative paths are made absolute (against the working directory) when resolving, so
# the saved config still points at the same files from anywhere.
_PATH_KEYS = ("output_dir", "data.root", "data.split_file", "data.cache_dir")


def resolve_config(path: Path | str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Load the YAML config ``path``, apply ``overrides``, fill the defaults and validate.

    Args:
        path: YAML file with the sections of ``docs/internals.md`` (missing keys take defaults).
        overrides: dotted ``key=value`` strings, e.g. ``["trainer.max_epochs=5", "model.name=unet3d"]``;
            values are parsed as YAML scalars or lists (``[64, 64, 32]``, ``null``, ``true``).

    Returns:
        The resolved config: nested plain dicts, lists, strings, numbers, booleans and ``None``.

    Raises:
        ValueError: unreadable file, bad override, unknown key, wrong type or bad value; the message
            names the file and the key.
    """
    path = Path(path)
    config = _merge(copy.deepcopy(_defaults(SCHEMA)), load_yaml(path))
    _reset_model_if_renamed(config, overrides, path)
    for override in overrides:
        apply_override(config, override, path)
    _validate(config, SCHEMA, path, prefix="")
    _check_values(config, path)
    config["preprocess"] = _resolve_preprocess(config, path)
    _check_model_name(config, path)
    _absolutise_paths(config)
    return to_plain(config)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (an empty file is an empty mapping)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ValueError(f"{path}: cannot read the config ({error.strerror or error})") from error
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: the top level of a config must be a mapping, got {type(loaded).__name__}")
    return loaded


def apply_override(config: dict[str, Any], override: str, path: Path) -> None:
    """Set ``config[a][b] = value`` in place from ``"a.b=value"`` (value parsed as YAML)."""
    key, sep, raw_value = override.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"{path}: override {override!r} is not of the form key.subkey=value")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: override {override!r}: value is not valid YAML") from error
    *parents, leaf = (int(part) if part.isdigit() else part for part in key.split("."))
    node = config
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            section = ".".join(str(part) for part in parents[: depth + 1])
            raise ValueError(f"{path}: override {override!r}: {section} is not a section")
        node = child
    node[leaf] = value


def _reset_model_if_renamed(config: dict[str, Any], overrides: Sequence[str], path: Path) -> None:
    """An override ``model.name=X`` naming another model than the file selects X with its defaults:
    the file's model arguments are dropped (later ``model.*`` overrides still apply)."""
    names = [
        item.partition("=")[2].strip() for item in overrides if item.partition("=")[0].strip() == "model.name"
    ]
    model = config.get("model")
    if names and isinstance(model, dict) and model.get("name") != names[-1]:
        logger.info("model.name=%s replaces %s of %s and its arguments", names[-1], model.get("name"), path)
        config["model"] = {}


def save_config(config: Mapping[str, Any], path: Path) -> Path:
    """Write ``config`` as YAML to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_plain(config), sort_keys=False, default_flow_style=None)
    temporary = sibling_temporary(path)
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def sibling_temporary(path: Path) -> Path:
    """A unique temporary name in the folder of ``path`` (created with the usual umask permissions,
    unlike ``tempfile.mkstemp``'s owner-only files), for write-then-rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def to_plain(value: Any) -> Any:
    """Deep copy of ``value`` with tuples as lists and paths as strings (YAML- and pickle-safe)."""
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The default config described by ``schema``."""
    defaults: dict[str, Any] = {}
    for key, spec in schema.items():
        if isinstance(spec, Field):
            defaults[key] = spec.default
        else:
            defaults[key] = spec if key in FREE_SECTIONS else _defaults(spec)
    return defaults


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive update of ``base`` by ``update`` (sections merge, leaves replace)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict) and key not in _REPLACED_SECTIONS:
            base[key] = _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _validate(config: dict[str, Any], schema: Mapping[str, Any], path: Path, prefix: str) -> None:
    """Check keys and types against ``schema`` in place (ints in float fields become floats)."""
    for key in config:
        if key not in schema:
            known = ", ".join(sorted(str(name) for name in schema))
            raise ValueError(f"{path}: unknown key {prefix}{key!s} (known: {known})")
    for key, spec in schema.items():
        dotted = f"{prefix}{key}"
        value = config[key]
        if key in FREE_SECTIONS and not prefix:
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {dotted} must be a mapping, got {type(value).__name__}")
        elif isinstance(spec, Field):
            config[key] = _check_type(value, spec, dotted, path)
        elif not isinstance(value, dict):
            raise ValueError(f"{path}: {dotted} must be a section (mapping), got {type(value).__name__}")
        else:
            _validate(value, spec, path, prefix=f"{dotted}.")


def _check_type(value: Any, spec: Field, dotted: str, path: Path) -> Any:
    """Return ``value`` if it has one of ``spec.types`` (numbers coerced to float where allowed)."""
    if float in spec.types and not isinstance(value, bool):
        if isinstance(value, int) and int not in spec.types:
            return float(value)
        if isinstance(value, str) and str not in spec.types:
            try:
                return float(value)  # PyYAML reads "1e-4" (no dot) as a string.
            except ValueError:
                pass
    is_bool = isinstance(value, bool)
    if isinstance(value, spec.types) and (not is_bool or bool in spec.types):
        return value
    names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in spec.types)
    raise ValueError(f"{path}: {dotted} must be {names}, got {value!r}")


def _check_values(config: dict[str, Any], path: Path) -> None:
    """Value checks that the types alone do not cover."""
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = config[section][key]
        if value not in choices:
            raise ValueError(f"{path}: {dotted} must be one of {', '.join(choices)}, got {value!r}")
    if not isinstance(config["model"].get("name"), str):
        raise ValueError(f"{path}: model.name must be the name of a registered model")
    weights = config["loss"]["deep_supervision_weights"]
    if weights is not None and (
        not weights
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)
    ):
        raise ValueError(
            f"{path}: loss.deep_supervision_weights must be null or a non-empty list of non-negative numbers"
        )
    ratios = config["data"]["split_ratios"]
    if len(ratios) != 3 or not all(isinstance(r, (int, float)) and r >= 0 for r in ratios):
        raise ValueError(f"{path}: data.split_ratios must be three non-negative numbers (train, val, test)")
    for dotted in ("trainer.max_epochs", "trainer.batch_size", "trainer.val_every", "trainer.num_nodes"):
        section, key = dotted.split(".")
        if config[section][key] < 1:
            raise ValueError(f"{path}: {dotted} must be at least 1, got {config[section][key]}")
    ema_decay = config["trainer"]["ema_decay"]
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"{path}: trainer.ema_decay must be null or in (0, 1), got {ema_decay}")
    if not 0.0 <= config["inference"]["overlap"] < 1.0:
        raise ValueError(f"{path}: inference.overlap must be in [0, 1), got {config['inference']['overlap']}")
    classes = config["classes"]
    if len(classes) < 2 or not all(isinstance(label, int) for label in classes):
        raise ValueError(f"{path}: classes must map at least two integer labels to names, got {classes}")
    if config["data"]["target"] == "binary" and len(classes) != 2:
        raise ValueError(f"{path}: data.target=binary needs exactly two classes, got {classes}")


def _resolve_preprocess(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``preprocess`` section with every ``PreprocessConfig`` field filled and checked.

    ``binarize_label`` follows ``data.target`` (binary: every label > 0 becomes 1); setting it against
    the target is an error.
    """
    from h2aseg.data.transforms import PreprocessConfig

    section = dict(config["preprocess"])
    binary = config["data"]["target"] == "binary"
    if section.setdefault("binarize_label", binary) != binary:
        raise ValueError(
            f"{path}: preprocess.binarize_label={section['binarize_label']} contradicts "
            f"data.target={config['data']['target']}"
        )
    try:
        return PreprocessConfig.from_dict(section).to_dict()
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def _check_model_name(config: dict[str, Any], path: Path) -> None:
    """``model.name`` must be a registered model."""
    from h2aseg.models import list_models

    names = list_models()
    if config["model"]["name"] not in names:
        raise ValueError(f"{path}: model.name={config['model']['name']!r} is not one of {', '.join(names)}")


def _absolutise_paths(config: dict[str, Any]) -> None:
    """Make the path keys absolute, so the saved config does not depend on the working directory."""
    for dotted in _PATH_KEYS:
        *sections, key = dotted.split(".")
        node = config
        for section in sections:
            node = node[section]
        if node[key] is not None:
            node[key] = str(Path(node[key]).expanduser().absolute())
