"""``SegmentationModule``: the Lightning training and validation steps around any registered network."""

from __future__ import annotations

import logging
from typing import Any

import lightning
import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.utils import convert_to_tensor
from torch.nn import functional as F

from h2aseg.config import to_plain
from h2aseg.inference.checkpoint import build_network
from h2aseg.inference.predictor import sliding_window_logits
from h2aseg.models.output_prior import set_output_prior
from h2aseg.models.registry import DeeplySupervised
from h2aseg.training.loss import DeepSupervisionLoss

logger = logging.getLogger(__name__)

POLY_POWER = 0.9
"""Exponent of the ``poly`` learning-rate schedule (nnU-Net's)."""


def patch_size_of(config: dict[str, Any]) -> tuple[int, int, int]:
    """The training patch size ``(X, Y, Z)`` in voxels (``preprocess.patch_size``), the sliding-window roi."""
    return tuple(int(size) for size in config["preprocess"]["patch_size"])  # type: ignore[return-value]


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 32-bit seed that depends only on the run's seed, the optimisation step and the process rank."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class SegmentationModule(lightning.LightningModule):
    """Training (patches, CE/BCE + Dice, deep supervision if the network has it) and validation
    (whole volumes by Gaussian sliding window, foreground Dice) of one registered network.

    Args:
        config: the resolved run config (:func:`h2aseg.config.resolve_config`); stored as the
            checkpoint's ``hyper_parameters["config"]``.

    Logged: ``train/loss`` (per step and per epoch), ``val/dice`` (mean foreground Dice over the
    validation volumes that contain foreground), ``lr``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters({"config": to_plain(config)})
        self.config = self.hparams["config"]
        self.model = build_network(self.config)
        prior = self.config["optim"].get("output_prior")
        if prior is not None:
            set_output_prior(self.model, prior, patch_size_of(self.config))
        self.deep_supervision = isinstance(self.model, DeeplySupervised)
        weights = self.config["loss"]["deep_supervision_weights"] if self.deep_supervision else None
        self.loss = DeepSupervisionLoss(
            weights,
            output_activation=self.model.output_activation,
            batch_dice=self.config["loss"]["batch_dice"],
        )
        self.n_classes = len(self.config["classes"])
        self.binary_target = self.config["data"]["target"] == "binary"
        self.dice_metric = DiceMetric(
            include_background=self.model.output_activation == "sigmoid",
            reduction="mean_batch",
            ignore_empty=True,
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C, X, Y, Z)`` of ``image`` ``(B, 2, X, Y, Z)`` (channel 0 CT, channel 1 PET)."""
        return self.model(image)

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        """Reseed torch from (seed, step): dropout draws then depend on the step alone, so a resumed run
        repeats an uninterrupted one exactly (Lightning's checkpoints do not hold the RNG states)."""
        torch.manual_seed(step_seed(self.config["seed"], self.global_step, self.global_rank))

    def training_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> torch.Tensor:
        """Loss of one batch of patches ``image (B, 2, x, y, z)``, ``label (B, 1, x, y, z)``."""
        image, label = self._image_and_label(batch)
        logits = self.model.forward_deep(image) if self.deep_supervision else self.model(image)
        loss = self.loss(logits, label)
        if hasattr(self.model, "auxiliary_loss"):
            # Branch supervision / consistency terms of networks that have them (A2FSeg, SDB): see
            # h2aseg.models.fusion_blocks.
            auxiliary = self.model.auxiliary_loss(label, self.loss.per_output_loss)
            self.log(
                "train/auxiliary_loss", auxiliary, on_step=False, on_epoch=True, batch_size=image.shape[0]
            )
            loss = loss + auxiliary
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=image.shape[0],
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_index: int) -> None:
        """Sliding-window segmentation of one whole volume and its Dice against the label."""
        image, label = self._image_and_label(batch)
        inference = self.config["inference"]
        logits = sliding_window_logits(
            self.model,
            image,
            patch_size_of(self.config),
            inference["sw_batch_size"],
            inference["overlap"],
            inference["mode"],
        )
        self.dice_metric(y_pred=self._one_hot_prediction(logits), y=self._one_hot_label(label))

    def on_validation_epoch_end(self) -> None:
        """Log ``val/dice``, the mean over foreground classes of each class's mean Dice over the volumes
        holding it (nan when none has foreground), with several classes also ``val/dice_{name}``; reset."""
        names = [name for label, name in sorted(self.config["classes"].items()) if label != 0]
        per_class = (
            self.dice_metric.aggregate().reshape(-1) if len(self.dice_metric) else torch.full((1,), torch.nan)
        )
        self.dice_metric.reset()
        self.log("val/dice", torch.nanmean(per_class).item(), prog_bar=True, sync_dist=True)
        if len(names) > 1 and len(per_class) == len(names):
            for name, dice in zip(names, per_class.tolist(), strict=True):
                self.log(f"val/dice_{name}", dice, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam with weight decay; after every epoch the learning rate is multiplied by ``optim.lr_decay``
        (``optim.schedule=exponential``, the paper) or set to ``lr · (1 - epoch / max_epochs)^0.9``
        (``poly``, nnU-Net's schedule, which ends near zero at ``trainer.max_epochs``)."""
        optim = self.config["optim"]
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"]
        )
        if optim["schedule"] == "poly":
            scheduler = torch.optim.lr_scheduler.PolynomialLR(
                optimizer, total_iters=self.config["trainer"]["max_epochs"], power=POLY_POWER
            )
        else:
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=optim["lr_decay"])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def _image_and_label(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain tensors (no MONAI metadata tracking in the network); labels binarised for a binary target."""
        image = convert_to_tensor(batch["image"], track_meta=False).float()
        label = convert_to_tensor(batch["label"], track_meta=False)
        label = (label > 0).float() if self.binary_target else label.round().float()
        return image, label

    def _one_hot_prediction(self, logits: torch.Tensor) -> torch.Tensor:
        """Discrete prediction ``(B, C, X, Y, Z)`` (one-hot for softmax, ``logit > 0`` for sigmoid)."""
        if self.model.output_activation == "sigmoid":
            return (logits > 0).float()
        return F.one_hot(logits.argmax(dim=1), self.n_classes).movedim(-1, 1).float()

    def _one_hot_label(self, label: torch.Tensor) -> torch.Tensor:
        """One-hot label ``(B, C, X, Y, Z)`` matching :meth:`_one_hot_prediction`."""
        if self.model.output_activation == "sigmoid":
            return label
        return F.one_hot(label[:, 0].long(), self.n_classes).movedim(-1, 1).float()
