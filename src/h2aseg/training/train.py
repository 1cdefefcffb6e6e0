"""``train``: one run from a YAML config, on one CPU, one GPU, several GPUs or several nodes.

Multi-GPU and multi-node training need no code change: set ``trainer.devices``, ``trainer.num_nodes``
and ``trainer.strategy=ddp`` and launch as usual (plain ``python``/``h2aseg`` for one node, ``torchrun``
or SLURM ``srun`` for several; Lightning reads the cluster environment).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import (
    Callback,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from h2aseg.config import CONFIG_FILENAME, resolve_config, save_config, to_plain
from h2aseg.data.check import MIN_CT_COVERAGE
from h2aseg.io import atomic_output, remove_stale_temporaries
from h2aseg.training.datamodule import PETCTDataModule
from h2aseg.training.module import SegmentationModule
from h2aseg.training.preflight import (
    StopOnNonFiniteLoss,
    check_network,
    check_run_folder,
    check_training_data,
    clear_run_folder,
)

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best"
LAST_NAME = "last"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in its own folder, then renames it into place.

    Lightning's own writer goes through an fsspec transaction whose temporary file lies in the system
    temp folder; when that is another file system than the run folder (local ``/tmp``, run on NFS or
    Lustre) the final move is a copy, and a crash mid-copy leaves a truncated ``last.ckpt``.
    ``os.replace`` within one folder is atomic. Remote URLs (``s3://``...) keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically."""
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as temporary, temporary.open("wb") as stream:
            torch.save(checkpoint, stream)


class TimeBudget(Callback):
    """Stops training after ``minutes`` of wall time, validating the final weights first.

    Lightning's ``max_time`` stops without a validation unless the epoch happens to be one of
    ``trainer.val_every``, so ``best.ckpt`` could miss the last epochs; here the stopping epoch is
    always validated. All ranks take the decision together (a rank that stops alone would hang DDP).
    The budget counts from the start of this invocation (a resumed run gets a new budget).

    Args:
        minutes: wall-time budget of the training loop.
    """

    def __init__(self, minutes: float) -> None:
        self.seconds = 60.0 * minutes
        self.started = time.monotonic()

    def on_train_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        """Start the clock."""
        self.started = time.monotonic()

    def on_train_batch_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        """Request the stop (and a validation of this epoch) once the budget is spent."""
        spent = time.monotonic() - self.started >= self.seconds
        if trainer.strategy.reduce_boolean_decision(spent, all=False):
            logger.warning(
                "SAFETY LIMIT: the time budget of %.1f min cut training at step %d (validating and stopping)",
                self.seconds / 60,
                trainer.global_step,
            )
            trainer.should_stop = True
            trainer.check_val_every_n_epoch = 1


def train(
    config_path: Path,
    overrides: Sequence[str] = (),
    resume: bool = False,
    *,
    overwrite: bool = False,
    allow_non_suv: bool = False,
    min_ct_coverage: float = MIN_CT_COVERAGE,
) -> Path:
    """Train the model of a YAML config and return the path of its best checkpoint.

    Args:
        config_path: YAML run config (``configs/*.yaml``; reference in ``docs/training.md``).
        overrides: dotted ``key=value`` overrides, e.g. ``["trainer.max_epochs=5", "data.root=data/x"]``.
        resume: continue the run of ``output_dir`` from ``checkpoints/last.ckpt`` (weights, optimiser,
            scheduler, epoch counter); the same config gives the same weights as an uninterrupted run.
        overwrite, allow_non_suv, min_ct_coverage: as in :func:`run_training`.

    Returns:
        ``output_dir/checkpoints/best.ckpt`` (highest ``val/dice``), or ``last.ckpt`` if no validation ran.

    Raises:
        ValueError: bad config (the key and the file or override named), bad dataset (the file
            named), a run folder with checkpoints without ``resume`` or ``overwrite``, a resume
            whose config changes the network or data, or a non-finite training loss.
    """
    config = resolve_config(config_path, overrides)
    check_network(config, Path(config_path), overrides)
    trainer = run_training(
        config,
        resume=resume,
        overwrite=overwrite,
        allow_non_suv=allow_non_suv,
        min_ct_coverage=min_ct_coverage,
    )
    best_path = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best_path:
        return Path(best_path)
    last_path = checkpoint_dir(config) / f"{LAST_NAME}.ckpt"
    logger.warning("no validation ran (trainer.val_every > epochs trained): returning %s", last_path)
    return last_path


def run_training(
    config: Mapping[str, Any],
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    *,
    overwrite: bool = False,
    allow_non_suv: bool = False,
    min_ct_coverage: float = MIN_CT_COVERAGE,
) -> lightning.Trainer:
    """Check the run folder and every case, build module, data and trainer, save the config, fit.

    Nothing is written before the checks pass; a run that fails before its first checkpoint
    removes what it wrote (config, split, logs).

    Args:
        config: resolved config (:func:`h2aseg.config.resolve_config`).
        resume: continue from ``output_dir/checkpoints/last.ckpt`` (same network and data).
        callbacks: extra Lightning callbacks.
        overwrite: replace a run already in ``output_dir``.
        allow_non_suv: accept PET whose range is not SUV (other tracers).
        min_ct_coverage: least fraction of the PET body extent the CT covers per axis (0 = any).

    Returns:
        The fitted trainer (``trainer.lightning_module`` holds the final weights).
    """
    config = to_plain(config)
    output_dir = Path(config["output_dir"])
    directory = checkpoint_dir(config)
    last_path = directory / f"{LAST_NAME}.ckpt"
    check_run_folder(config, directory, resume, overwrite)
    check_training_data(config, allow_non_suv, min_ct_coverage)
    lightning.seed_everything(config["seed"], workers=True)
    module = SegmentationModule(config)
    datamodule = PETCTDataModule(config)
    try:
        trainer = build_trainer(config, [StopOnNonFiniteLoss(), *callbacks])
    except MisconfigurationException as error:
        chosen = ", ".join(f"trainer.{key}={config['trainer'][key]}" for key in ("accelerator", "devices"))
        raise ValueError(f"{chosen}: {str(error).strip().splitlines()[0]}") from error
    existed = output_dir.exists()
    if rank_zero_only.rank == 0:
        remove_stale_temporaries(directory)
        if overwrite:
            clear_run_folder(output_dir, keep=config["data"]["split_file"])
        save_config(config, output_dir / CONFIG_FILENAME)
        logger.info("resolved config written to %s", output_dir / CONFIG_FILENAME)
    try:
        with warnings.catch_warnings():
            # Lesion-free studies are normal (a third of AutoPET): MONAI warns on every patch drawn from one.
            warnings.filterwarnings("ignore", message="Num foregrounds 0")
            warnings.filterwarnings("ignore", message=".*treespec.*deprecated")
            trainer.fit(module, datamodule=datamodule, ckpt_path=last_path if resume else None)
    except BaseException:
        if rank_zero_only.rank == 0 and not any(directory.glob("*.ckpt")):
            clear_run_folder(output_dir, keep=config["data"]["split_file"])
            if not existed and output_dir.is_dir() and not any(output_dir.iterdir()):
                output_dir.rmdir()
        raise
    return trainer


def checkpoint_dir(config: dict[str, Any]) -> Path:
    """``output_dir/checkpoints``."""
    return Path(config["output_dir"]) / CHECKPOINT_DIR


def build_trainer(config: dict[str, Any], callbacks: Sequence[Callback] = ()) -> lightning.Trainer:
    """A Lightning ``Trainer`` from the ``trainer`` section (stopping at ``max_epochs`` or, when set,
    ``max_steps`` optimisation steps, whichever comes first): checkpoints, CSV and TensorBoard logs,
    Rich progress bar, precision, accelerator, devices, nodes, strategy and an optional exponential
    moving average of the weights (``trainer.ema_decay``)."""
    settings = config["trainer"]
    directory = checkpoint_dir(config)
    best = ModelCheckpoint(
        dirpath=directory,
        filename=BEST_NAME,
        monitor="val/dice",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=False,
    )
    last = ModelCheckpoint(
        dirpath=directory,
        filename=LAST_NAME,
        save_top_k=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    logs_dir = Path(config["output_dir"]) / "logs"
    loggers = [CSVLogger(logs_dir, name="csv"), TensorBoardLogger(logs_dir, name="tensorboard")]
    budget = [] if settings["max_time_minutes"] is None else [TimeBudget(settings["max_time_minutes"])]
    # With an EMA, validation and both checkpoints' "state_dict" use the averaged weights (what
    # prediction loads); "current_model_state" keeps the raw ones for --resume.
    averaging = [] if settings["ema_decay"] is None else [EMAWeightAveraging(decay=settings["ema_decay"])]
    optional = {
        key: settings[key]
        for key in ("limit_train_batches", "limit_val_batches")
        if settings[key] is not None
    }
    return lightning.Trainer(
        accelerator=settings["accelerator"],
        devices=settings["devices"],
        num_nodes=settings["num_nodes"],
        strategy=settings["strategy"],
        precision=settings["precision"],
        max_epochs=settings["max_epochs"],
        max_steps=-1 if settings["max_steps"] is None else settings["max_steps"],
        check_val_every_n_epoch=settings["val_every"],
        log_every_n_steps=settings["log_every_n_steps"],
        callbacks=[
            best,
            last,
            LearningRateMonitor(logging_interval="epoch"),
            RichProgressBar(),
            *budget,
            *averaging,
            *callbacks,
        ],
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        **optional,
    )
