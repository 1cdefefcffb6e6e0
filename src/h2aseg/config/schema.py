"""The schema of a run config: one dataclass per YAML section, every key and its default once.

``docs/training.md`` documents the keys; :mod:`h2aseg.config.resolve` loads and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, get_type_hints

from h2aseg.data.transforms import PreprocessConfig

TARGETS = ("binary", "multiclass")
BLEND_MODES = ("gaussian", "constant")
SCHEDULES = ("exponential", "poly")


@dataclass
class DataConfig:
    """The ``data:`` section (meanings in ``docs/training.md``)."""

    root: str | None = None
    layout: str = "auto"
    split_file: str | None = None
    split_ratios: list[float] = field(default_factory=lambda: [6, 2, 2])
    fold: int | None = None
    n_folds: int = 5
    target: str = "binary"
    cache_dir: str | None = None
    cache_in_memory: bool = False
    num_workers: int = 0


@dataclass
class LossConfig:
    """The ``loss:`` section."""

    deep_supervision_weights: list[float] | None = field(default_factory=lambda: [5, 4, 3, 2, 1])
    batch_dice: bool = False


@dataclass
class OptimConfig:
    """The ``optim:`` section."""

    lr: float = 1.0e-4
    weight_decay: float = 1.0e-5
    lr_decay: float = 0.99
    schedule: str = "exponential"
    output_prior: float | None = None


@dataclass
class TrainerConfig:
    """The ``trainer:`` section; the ``Any`` fields take several types (checked in
    :mod:`h2aseg.config.resolve`)."""

    max_epochs: int = 200
    max_steps: int | None = None
    max_time_minutes: float | None = None
    batch_size: int = 2
    val_every: int = 5
    accelerator: str = "auto"
    devices: Any = "auto"  # int, list of device indices, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Any = "32-true"  # str or int (Lightning's)
    limit_train_batches: Any = None  # int (batches), float (fraction) or None
    limit_val_batches: Any = None
    log_every_n_steps: int = 10
    ema_decay: float | None = None


@dataclass
class InferenceConfig:
    """The ``inference:`` section: sliding window of validation and prediction, flip TTA."""

    sw_batch_size: int = 2
    overlap: float = 0.5
    mode: str = "gaussian"
    tta_flips: bool = False


def _schema_of(frozen: type) -> type:
    """A mutable dataclass with the fields, types and defaults of ``frozen`` (OmegaConf marks the
    nodes of a frozen dataclass read-only, which would refuse the merge of the YAML values)."""
    hints = get_type_hints(frozen)
    return make_dataclass(
        f"{frozen.__name__}Schema",
        [
            (f.name, hints[f.name], field(default_factory=lambda value=f.default: value))
            for f in fields(frozen)
        ],
    )


PreprocessSchema = _schema_of(PreprocessConfig)
"""The ``preprocess:`` section: the fields of :class:`h2aseg.data.transforms.PreprocessConfig`."""


@dataclass
class RunConfig:
    """One run: every key of the YAML file and its default.

    ``model`` is ``name`` plus keyword arguments of ``build_model`` (checked by the model's
    constructor); ``classes`` maps integer labels to names.
    """

    seed: int = 0
    output_dir: str = "runs/h2aseg"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessSchema = field(default_factory=PreprocessSchema)  # type: ignore[valid-type]
    model: dict[str, Any] = field(default_factory=lambda: {"name": "h2aseg"})
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    classes: dict[Any, str] = field(default_factory=lambda: {0: "background", 1: "lesion"})
