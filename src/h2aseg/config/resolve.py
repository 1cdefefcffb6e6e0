"""Loading, overriding, checking and saving run configs of the schema :mod:`h2aseg.config.schema`.

:func:`resolve_config` merges a YAML file and ``key=value`` overrides onto :class:`RunConfig`,
refuses unknown keys and wrong types with the dotted key named, and returns a ``DictConfig``;
:func:`to_plain` makes the plain values that checkpoints and ``config.yaml`` hold.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from h2aseg.config.schema import BLEND_MODES, SCHEDULES, TARGETS, RunConfig
from h2aseg.data.layouts import LAYOUTS
from h2aseg.data.transforms import PreprocessConfig
from h2aseg.io import first_line, write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_FILENAME = "config.yaml"

_CHOICES: dict[str, tuple[str, ...]] = {
    "data.target": TARGETS,
    "data.layout": ("auto", *LAYOUTS),
    "inference.mode": BLEND_MODES,
    "optim.schedule": SCHEDULES,
}

# Sections that a file or an override gives as a whole replace the default instead of merging.
_REPLACED_SECTIONS = ("classes",)

# Relative paths are made absolute (against the working directory) so that the saved config points
# at the same files from anywhere.
_PATH_KEYS = ("output_dir", "data.root", "data.split_file", "data.cache_dir")

# Keys of configs saved by earlier versions that no longer exist: dropped when such a config loads.
_RETIRED_KEYS = ("preprocess.cache_dir",)


def resolve_config(path: Path | str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load the YAML config ``path``, apply ``overrides``, fill the defaults and validate.

    Args:
        path: YAML file with the sections of :class:`RunConfig` (missing keys take defaults).
        overrides: dotted ``key=value`` strings, e.g. ``["trainer.max_epochs=5", "model.name=unet3d"]``;
            values are read as YAML (``[64, 64, 32]``, ``null``, ``true``).

    Returns:
        The resolved config, a ``DictConfig`` of :class:`RunConfig`.

    Raises:
        ValueError: unreadable file, bad override, unknown key, wrong type or bad value; the message
            names the file, the key, and the override when an override is at fault.
    """
    path = Path(path)
    return resolve_values(load_yaml(path), overrides, source=str(path))


def resolve_values(
    values: Mapping[str, Any], overrides: Sequence[str] = (), source: str = "config"
) -> DictConfig:
    """:func:`resolve_config` for values already read (a YAML mapping, or a checkpoint's config).

    Args:
        values: nested mapping of sections.
        overrides: as in :func:`resolve_config`.
        source: what the values came from, the start of every error message.
    """
    config = _merge(OmegaConf.structured(RunConfig), values, source)
    for override in _rename_model_overrides(config, overrides, source):
        key, _, _ = override.partition("=")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([override]))
        except OmegaConfBaseException as error:
            raise ValueError(f"{source}: override {override!r}: {first_line(error)}") from error
        config = _merge(config, parsed, f"{source}: override {override!r}", replace_whole=key.strip())
    _normalise_classes(config, source)
    _check_values(config, source)
    _resolve_preprocess(config, values, overrides, source)
    _check_model_name(config, source)
    _absolutise_paths(config)
    return config


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


def checkpoint_config(values: Any, source: str) -> dict[str, Any]:
    """The plain resolved config of a checkpoint's ``hyper_parameters["config"]``.

    Configs saved by earlier versions (plain dicts of the hand-written schema) load too: keys added
    since take their defaults and retired keys (``preprocess.cache_dir``, never used) are dropped.

    Raises:
        ValueError: not a mapping with a ``model`` section, or values the schema refuses.
    """
    if not isinstance(values, Mapping) or not isinstance(values.get("model"), Mapping):
        raise ValueError(f"{source}: no resolved config with a 'model' section under hyper_parameters")
    values = to_plain(values)
    for dotted in _RETIRED_KEYS:
        section, key = dotted.split(".")
        if isinstance(values.get(section), dict) and key in values[section]:
            logger.debug("%s: dropping retired key %s=%r", source, dotted, values[section].pop(key))
    return to_plain(resolve_values(values, source=source))


def save_config(config: Mapping[str, Any] | DictConfig, path: Path) -> Path:
    """Write ``config`` as YAML to ``path`` atomically."""
    text = yaml.safe_dump(to_plain(config), sort_keys=False, default_flow_style=None)
    return write_text_atomic(path, text)


def to_plain(value: Any) -> Any:
    """Deep copy of ``value`` (``DictConfig`` included) as dicts, lists, strings, numbers, ``None``."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _merge(config: DictConfig, values: Any, source: str, replace_whole: str = "") -> DictConfig:
    """``config`` updated by ``values``, with OmegaConf's errors turned into one line naming the key."""
    if not isinstance(values, Mapping):
        raise ValueError(
            f"{source}: the top level of a config must be a mapping, got {type(values).__name__}"
        )
    _check_sections(values, RunConfig, source, prefix="")
    for section in _REPLACED_SECTIONS:
        if section in values and (replace_whole in ("", section)):
            config[section] = {}
    try:
        return OmegaConf.merge(config, values)  # type: ignore[return-value]
    except ConfigKeyError as error:
        parent, _, _ = str(error.full_key).rpartition(".")
        node = OmegaConf.select(config, parent) if parent else config
        known = ", ".join(sorted(str(key) for key in node)) if isinstance(node, DictConfig) else ""
        raise ValueError(f"{source}: unknown key {error.full_key} (known: {known})") from error
    except ValidationError as error:
        dotted = str(error.full_key)
        raise ValueError(f"{source}: {dotted} must be {_annotation(dotted)} ({first_line(error)})") from error
    except OmegaConfBaseException as error:
        raise ValueError(f"{source}: {error.full_key}: {first_line(error)}") from error


def _check_sections(values: Mapping[str, Any], schema: type, source: str, prefix: str) -> None:
    """Sections (dataclass or dict fields) must be given as mappings, not as scalars or lists."""
    hints = get_type_hints(schema)
    for key, value in values.items():
        kind = hints.get(key)
        if kind is None:
            continue  # unknown keys are refused by the merge, with the known ones listed
        dotted = f"{prefix}{key}"
        if is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise ValueError(
                    f"{source}: {dotted} must be a section (mapping), got {type(value).__name__}"
                )
            _check_sections(value, kind, source, prefix=f"{dotted}.")
        elif getattr(kind, "__origin__", None) is dict and not isinstance(value, Mapping):
            raise ValueError(f"{source}: {dotted} must be a mapping, got {type(value).__name__}")


def _annotation(dotted: str) -> str:
    """The declared type of ``dotted`` (``"int"``, ``"float | None"``), for error messages."""
    schema: Any = RunConfig
    kind: Any = None
    for part in dotted.split("[")[0].split("."):
        if not is_dataclass(schema):
            break
        kind = get_type_hints(schema).get(part)
        schema = kind
    if kind is None:
        return "of another type"
    return getattr(kind, "__name__", None) if isinstance(kind, type) else str(kind).replace("typing.", "")


def _rename_model_overrides(config: DictConfig, overrides: Sequence[str], source: str) -> list[str]:
    """Check the form of ``overrides``; an override ``model.name=X`` naming another model than the
    file selects X with its defaults (the file's model arguments are dropped; later ``model.*``
    overrides still apply)."""
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ValueError(f"{source}: override {override!r} is not of the form key.subkey=value")
    names = [
        item.partition("=")[2].strip() for item in overrides if item.partition("=")[0].strip() == "model.name"
    ]
    if names and config.model.get("name") != names[-1]:
        logger.info(
            "model.name=%s replaces %s of %s and its arguments", names[-1], config.model.get("name"), source
        )
        config.model = {}
    return list(overrides)


def _normalise_classes(config: DictConfig, source: str) -> None:
    """``classes`` keys as ints (a dotted override ``classes.2=GTVn`` gives the key as a string)."""
    classes = {}
    for label, name in config.classes.items():
        try:
            classes[int(label)] = name
        except (TypeError, ValueError):
            raise ValueError(f"{source}: classes keys must be integer labels, got {label!r}") from None
    config.classes = dict(sorted(classes.items()))


def _check_values(config: DictConfig, source: str) -> None:
    """Value checks that the types alone do not cover (choices, ranges, the ``Any`` fields)."""
    for dotted, choices in _CHOICES.items():
        value = OmegaConf.select(config, dotted)
        if value not in choices:
            raise ValueError(f"{source}: {dotted} must be one of {', '.join(choices)}, got {value!r}")
    if not isinstance(config.model.get("name"), str):
        raise ValueError(f"{source}: model.name must be the name of a registered model")
    weights = config.loss.deep_supervision_weights
    if weights is not None and (not weights or min(weights) < 0):
        raise ValueError(
            f"{source}: loss.deep_supervision_weights must be null or a non-empty list of "
            "non-negative numbers"
        )
    ratios = config.data.split_ratios
    if len(ratios) != 3 or min(ratios) < 0:
        raise ValueError(f"{source}: data.split_ratios must be three non-negative numbers (train, val, test)")
    trainer = config.trainer
    for key in ("max_epochs", "batch_size", "val_every", "num_nodes"):
        if trainer[key] < 1:
            raise ValueError(f"{source}: trainer.{key} must be at least 1, got {trainer[key]}")
    if trainer.max_steps is not None and trainer.max_steps < 1:
        raise ValueError(f"{source}: trainer.max_steps must be null or at least 1, got {trainer.max_steps}")
    for key, (expected, accepts) in _ANY_FIELDS.items():
        if not accepts(trainer[key]):
            raise ValueError(f"{source}: trainer.{key} must be {expected}, got {trainer[key]!r}")
    if trainer.ema_decay is not None and not 0.0 < trainer.ema_decay < 1.0:
        raise ValueError(f"{source}: trainer.ema_decay must be null or in (0, 1), got {trainer.ema_decay}")
    prior = config.optim.output_prior
    if prior is not None and not 0.0 < prior < 1.0:
        raise ValueError(f"{source}: optim.output_prior must be null or in (0, 1), got {prior}")
    inference = config.inference
    if not 0.0 <= inference.overlap < 1.0 or inference.sw_batch_size < 1:
        raise ValueError(
            f"{source}: inference.overlap must be in [0, 1) and inference.sw_batch_size at least 1, "
            f"got {inference.overlap} and {inference.sw_batch_size}"
        )
    classes = dict(config.classes)
    if len(classes) < 2:
        raise ValueError(f"{source}: classes must map at least two integer labels to names, got {classes}")
    if config.data.target == "binary" and len(classes) != 2:
        raise ValueError(f"{source}: data.target=binary needs exactly two classes, got {classes}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The trainer fields that take several types (``Any`` in the schema): what they accept.
_ANY_FIELDS: dict[str, tuple[str, Any]] = {
    "devices": (
        "an int, a list of device indices or a string",
        lambda v: isinstance(v, str) or _is_int(v) or (isinstance(v, ListConfig) and all(map(_is_int, v))),
    ),
    "precision": ("a string or an int", lambda v: isinstance(v, str) or _is_int(v)),
    "limit_train_batches": (
        "null, an int or a float",
        lambda v: v is None or _is_int(v) or isinstance(v, float),
    ),
    "limit_val_batches": (
        "null, an int or a float",
        lambda v: v is None or _is_int(v) or isinstance(v, float),
    ),
}


def _resolve_preprocess(
    config: DictConfig, values: Mapping[str, Any], overrides: Sequence[str], source: str
) -> None:
    """Check ``preprocess`` with :class:`PreprocessConfig` (ranges, lengths); ``binarize_label``
    follows ``data.target`` (binary: every label > 0 becomes 1) unless set, and must agree with it."""
    binary = config.data.target == "binary"
    given = "binarize_label" in (values.get("preprocess") or {}) or any(
        item.partition("=")[0].strip() == "preprocess.binarize_label" for item in overrides
    )
    if not given:
        config.preprocess.binarize_label = binary
    elif config.preprocess.binarize_label != binary:
        raise ValueError(
            f"{source}: preprocess.binarize_label={config.preprocess.binarize_label} contradicts "
            f"data.target={config.data.target}"
        )
    try:
        PreprocessConfig.from_dict(to_plain(config.preprocess))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from error


def _check_model_name(config: DictConfig, source: str) -> None:
    """``model.name`` must be a registered model."""
    from h2aseg.models import list_models

    names = list_models()
    if config.model.name not in names:
        raise ValueError(f"{source}: model.name={config.model.name!r} is not one of {', '.join(names)}")


def _absolutise_paths(config: DictConfig) -> None:
    """Make the path keys absolute, so the saved config does not depend on the working directory."""
    for dotted in _PATH_KEYS:
        value = OmegaConf.select(config, dotted)
        if value is not None:
            OmegaConf.update(config, dotted, str(Path(value).expanduser().absolute()))
