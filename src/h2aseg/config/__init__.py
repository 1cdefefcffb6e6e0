"""Run configs on OmegaConf structured configs: one typed schema, YAML file, dotted overrides, checks.

:class:`RunConfig` (dataclasses) holds every key and its default, once; ``docs/training.md``
documents them. :func:`resolve_config` merges a YAML file and ``key=value`` overrides onto it,
refuses unknown keys and wrong types with the dotted key named, and returns a ``DictConfig``
(``config.trainer.batch_size`` and ``config["trainer"]["batch_size"]`` both work). Checkpoints and
``config.yaml`` hold :func:`to_plain` of it (dicts, lists, strings, numbers, booleans, ``None``)
so that they load with ``weights_only=True``.

The schema lives in :mod:`h2aseg.config.schema`, loading, overrides, checks and saving in
:mod:`h2aseg.config.resolve`; every public name of both is importable from here.
"""

from __future__ import annotations

from h2aseg.config.resolve import (
    CONFIG_FILENAME,
    checkpoint_config,
    load_yaml,
    resolve_config,
    resolve_values,
    save_config,
    to_plain,
)
from h2aseg.config.schema import (
    BLEND_MODES,
    SCHEDULES,
    TARGETS,
    DataConfig,
    InferenceConfig,
    LossConfig,
    OptimConfig,
    PreprocessSchema,
    RunConfig,
    TrainerConfig,
)

__all__ = [
    "BLEND_MODES",
    "CONFIG_FILENAME",
    "SCHEDULES",
    "TARGETS",
    "DataConfig",
    "InferenceConfig",
    "LossConfig",
    "OptimConfig",
    "PreprocessSchema",
    "RunConfig",
    "TrainerConfig",
    "checkpoint_config",
    "load_yaml",
    "resolve_config",
    "resolve_values",
    "save_config",
    "to_plain",
]
