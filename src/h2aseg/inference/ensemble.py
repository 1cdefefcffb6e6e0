"""Ensembles of several trained networks (e.g. the K cross-validation folds), nnU-Net's way.

Each member runs its own sliding window (and TTA) and turns its logits into probabilities; the
ensemble's probabilities are the plain mean of the members' (not of their logits), and the label
is taken from that mean. The members must agree on everything that defines the output's meaning
and the input they see: classes, preprocessing, output channels and activation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from h2aseg.inference.predictor import Predictor, TtaSetting
from h2aseg.inference.serving import load_predictor

logger = logging.getLogger(__name__)


class EnsemblePredictor(Predictor):
    """A :class:`Predictor` whose probabilities are the mean of its members'.

    Args:
        members: two or more predictors; the first one's sliding-window and TTA settings, device,
            config and transforms are the ensemble's.
        names: one name per member for the error messages (file paths), default ``member 1..N``.

    Raises:
        ValueError: fewer than two members, or members that disagree on ``classes``,
            ``preprocess``, ``out_channels`` or ``output_activation``.
    """

    def __init__(self, members: Sequence[Predictor], names: Sequence[str] | None = None) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
        names = list(names or [f"member {index + 1}" for index in range(len(members))])
        first = members[0]
        for name, member in zip(names[1:], members[1:], strict=True):
            checks = {
                "classes": (member.config.get("classes"), first.config.get("classes")),
                "preprocess": (member.preprocess, first.preprocess),
                "out_channels": (member.out_channels, first.out_channels),
                "output_activation": (member.activation, first.activation),
            }
            for key, (value, expected) in checks.items():
                if value != expected:
                    raise ValueError(
                        f"{name}: its {key} differ from {names[0]}'s; ensemble models must agree on "
                        f"classes, preprocessing and outputs"
                    )
        super().__init__(
            first.model,
            first.config,
            first.device,
            overlap=first.overlap,
            sw_batch_size=first.sw_batch_size,
            tta=[axes for axes in first.flips if axes],
        )
        self.members = list(members)
        for member in self.members[1:]:
            member.overlap, member.sw_batch_size, member.flips = self.overlap, self.sw_batch_size, self.flips

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Mean over the members of :meth:`Predictor.predict_volume`, ``(1, out_channels, X, Y, Z)``."""
        total = self.members[0].predict_volume(image)
        for member in self.members[1:]:
            total = total + member.predict_volume(image)  # not in place: inference tensors
        return total / len(self.members)


def load_ensemble(
    paths: Sequence[str | Path],
    device: str = "auto",
    *,
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    tta: TtaSetting = None,
) -> Predictor:
    """One :class:`Predictor` for one model file, an :class:`EnsemblePredictor` for several.

    Args:
        paths: checkpoints (``.ckpt``) or exported files (``.onnx``, ``.pt``), mixed freely.
        device, overlap, sw_batch_size, tta: as in :class:`Predictor`.
    """
    if not paths:
        raise ValueError("give at least one --model")
    predictors = [
        load_predictor(path, device, overlap=overlap, sw_batch_size=sw_batch_size, tta=tta) for path in paths
    ]
    if len(predictors) == 1:
        return predictors[0]
    logger.info("ensemble of %d models: probabilities averaged", len(predictors))
    return EnsemblePredictor(predictors, [str(path) for path in paths])
