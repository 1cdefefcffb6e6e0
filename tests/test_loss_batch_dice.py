"""``loss.batch_dice``: a lesion-free patch no longer adds a constant Dice term (closed forms)."""

from __future__ import annotations

import math

import torch

from h2aseg.training.loss import segmentation_loss

Q = 0.1  # foreground probability predicted everywhere on the lesion-free patch


def _case() -> tuple[torch.Tensor, torch.Tensor]:
    """Patch 0: an 8-voxel lesion predicted with certainty; patch 1: no lesion, p(lesion) = Q everywhere."""
    label = torch.zeros(2, 1, 4, 4, 4)
    label[0, 0, 1:3, 1:3, 1:3] = 1
    logits = torch.zeros(2, 2, 4, 4, 4)
    logits[0, 1] = 60.0 * (2 * label[0, 0] - 1)
    logits[1, 1] = math.log(Q / (1 - Q))
    return logits, label


def test_per_sample_and_batch_dice_match_their_closed_forms() -> None:
    logits, label = _case()
    cross_entropy = 0.5 * -math.log(1 - Q)  # only patch 1 contributes, half of the voxels
    n = 64
    empty_background = 1 - 2 * (1 - Q) / (2 - Q)  # patch 1, background class
    per_sample_dice = (0 + 0 + 1 + empty_background) / 4  # patch 1's lesion class scores 1
    batch_foreground = 1 - 16 / (16 + n * Q)
    kept = 56 + n * (1 - Q)
    batch_background = 1 - 2 * kept / (kept + 120)
    batch_dice = (batch_foreground + batch_background) / 2
    per_sample = segmentation_loss("softmax", batch_dice=False)(logits, label).item()
    per_batch = segmentation_loss("softmax", batch_dice=True)(logits, label).item()
    assert abs(per_sample - (cross_entropy + per_sample_dice)) < 1e-4
    assert abs(per_batch - (cross_entropy + batch_dice)) < 1e-4
    assert per_batch < per_sample
