"""Segmentation losses: cross-entropy (or BCE) + soft Dice, summed over deep-supervision outputs.

The authors' training script computes, for each of the five H2ASeg outputs (all up-sampled to the
label size), ``nn.CrossEntropyLoss()`` (mean over voxels) plus MONAI
``DiceLoss(include_background=True, to_onehot_y=True, softmax=True)`` (default smoothing 1e-5 in
numerator and denominator, Dice per sample and class, then the mean), and weights the five terms
5, 4, 3, 2, 1 from the finest output to the coarsest. MONAI's ``DiceCELoss`` with the same Dice
arguments and ``lambda_ce = lambda_dice = 1`` is exactly that sum (same cross-entropy, same Dice), so it
is used as is; with one sigmoid channel it switches to ``BCEWithLogitsLoss`` + Dice, the paper's
Eq. 5. MONAI's ``DeepSupervisionLoss`` does the weighted sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DeepSupervisionLoss as MonaiDeepSupervisionLoss
from monai.losses import DiceCELoss
from torch import nn

from h2aseg.models.registry import OutputActivation

H2ASEG_WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)


def segmentation_loss(
    output_activation: OutputActivation = "softmax", batch_dice: bool = False
) -> DiceCELoss:
    """Cross-entropy + soft Dice on logits, background included (the authors' per-output term).

    Args:
        output_activation: ``"softmax"``: logits ``(B, C, X, Y, Z)`` with ``C >= 2`` and an integer
            label map ``(B, 1, X, Y, Z)`` (one-hot encoded inside); ``"sigmoid"``: one logit channel
            ``(B, 1, X, Y, Z)`` and a binary label ``(B, 1, X, Y, Z)``, BCE + Dice.

    Returns:
        A loss module returning a scalar.
    """
    if output_activation == "softmax":
        return DiceCELoss(include_background=True, to_onehot_y=True, softmax=True, batch=batch_dice)
    if output_activation == "sigmoid":
        return DiceCELoss(include_background=True, to_onehot_y=False, sigmoid=True, batch=batch_dice)
    raise ValueError(f"output_activation must be 'softmax' or 'sigmoid', got {output_activation!r}")


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of CE (or BCE) + soft Dice over the outputs of a deeply supervised network.

    Lu et al., "H2ASeg: Hierarchical Adaptive Interaction and Weighting Network for Tumor
    Segmentation in PET/CT Images", MICCAI 2024, Eq. 5 (with the authors' code's softmax
    cross-entropy for two-channel logits).

    Accepted predictions:
        - a list of logits, finest first, each ``(B, C, X, Y, Z)`` (H2ASeg's ``forward_deep``);
          outputs smaller than the label get a nearest-neighbour down-sampled label;
        - one tensor ``(B, K, C, X, Y, Z)``: K stacked outputs (MONAI DynUNet with deep supervision);
        - one tensor ``(B, C, X, Y, Z)``: a plain network, the unweighted per-output loss.

    Args:
        weights: one weight per output, finest first; ``None`` halves the weight at every level
            (1, 0.5, 0.25, ..., floor 1/16: nnU-Net's convention, for DynUNet).
        output_activation: ``"softmax"`` (CE + Dice) or ``"sigmoid"`` (BCE + Dice), see
            :func:`segmentation_loss`.
        batch_dice: Dice over the whole batch instead of per sample, see :func:`segmentation_loss`.

    Example:
        >>> loss = DeepSupervisionLoss()
        >>> logits = [torch.zeros(1, 2, 4, 4, 4) for _ in range(5)]
        >>> value = loss(logits, torch.zeros(1, 1, 4, 4, 4))
    """

    def __init__(
        self,
        weights: Sequence[float] | None = H2ASEG_WEIGHTS,
        output_activation: OutputActivation = "softmax",
        batch_dice: bool = False,
    ) -> None:
        super().__init__()
        if weights is not None and (len(weights) == 0 or any(weight < 0 for weight in weights)):
            raise ValueError(f"weights must be a non-empty list of non-negative numbers, got {weights}")
        self.weights = None if weights is None else [float(weight) for weight in weights]
        self.output_activation = output_activation
        self.per_output_loss = segmentation_loss(output_activation, batch_dice)
        self.weighted_sum = MonaiDeepSupervisionLoss(
            self.per_output_loss, weight_mode="exp", weights=self.weights
        )

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        """Loss of ``logits`` against ``label``.

        Args:
            logits: see the class docstring.
            label: ``(B, 1, X, Y, Z)``, integer classes (softmax) or 0/1 (sigmoid), any dtype.

        Returns:
            Scalar float32 loss.
        """
        if isinstance(logits, torch.Tensor) and logits.ndim == label.ndim + 1:
            logits = list(logits.unbind(dim=1))
        if isinstance(logits, torch.Tensor):
            return self.per_output_loss(logits.float(), label)
        outputs = list(logits)
        if self.weights is not None and len(outputs) != len(self.weights):
            raise ValueError(f"got {len(outputs)} deep-supervision outputs for {len(self.weights)} weights")
        return self.weighted_sum(outputs, label.float())
