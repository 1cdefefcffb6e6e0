"""Closed-form checks of the segmentation and deep-supervision losses."""

from __future__ import annotations

import math

import pytest
import torch

from h2aseg.training.loss import DeepSupervisionLoss, segmentation_loss

SMOOTH = 1e-5  # MONAI DiceLoss default smoothing (numerator and denominator), as in the authors' code


def _label(seed: int = 0, shape: tuple[int, ...] = (2, 1, 6, 5, 4)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator) > 0.6).float()


def _reference(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The authors' per-output term written out: mean CE + mean over (sample, class) of soft Dice loss."""
    classes = logits.shape[1]
    target = label[:, 0].long()
    log_probs = torch.log_softmax(logits, dim=1)
    cross_entropy = -log_probs.gather(1, target[:, None]).mean()
    probs = log_probs.exp()
    one_hot = torch.nn.functional.one_hot(target, classes).movedim(-1, 1).float()
    dims = tuple(range(2, logits.ndim))
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice_loss = 1 - (2 * intersection + SMOOTH) / (denominator + SMOOTH)
    return cross_entropy + dice_loss.mean()


def test_batch_dice_pools_the_batch_before_the_ratio() -> None:
    torch.manual_seed(3)
    label = _label(seed=6)
    logits = torch.randn(2, 2, 6, 5, 4)
    as_one_sample = (
        logits.movedim(0, 1).reshape(1, 2, 12, 5, 4),
        label.movedim(0, 1).reshape(1, 1, 12, 5, 4),
    )
    expected = _reference(*as_one_sample)
    assert segmentation_loss(batch_dice=True)(logits, label).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_perfect_prediction_gives_zero_loss() -> None:
    label = _label()
    logits = torch.cat([1 - label, label], dim=1) * 40.0 - 20.0
    assert segmentation_loss()(logits, label).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_prediction_has_closed_form() -> None:
    label = _label()
    logits = torch.zeros(2, 2, 6, 5, 4)
    voxels = 6 * 5 * 4
    dice_terms = []
    for sample in range(2):
        lesion = label[sample].sum().item()
        for count in (voxels - lesion, lesion):
            dice_terms.append(1 - (2 * 0.5 * count + SMOOTH) / (0.5 * voxels + count + SMOOTH))
    expected = math.log(2) + sum(dice_terms) / len(dice_terms)
    assert segmentation_loss()(logits, label).item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_uniform_prediction_is_bce_log2_plus_dice() -> None:
    label = _label(seed=1)
    logits = torch.zeros(2, 1, 6, 5, 4)
    voxels = 6 * 5 * 4
    dice_terms = [
        1 - (2 * 0.5 * label[s].sum().item() + SMOOTH) / (0.5 * voxels + label[s].sum().item() + SMOOTH)
        for s in range(2)
    ]
    expected = math.log(2) + sum(dice_terms) / 2
    assert segmentation_loss("sigmoid")(logits, label).item() == pytest.approx(expected, rel=1e-6)


def test_matches_the_authors_formula_on_random_logits() -> None:
    torch.manual_seed(0)
    label = _label(seed=2)
    outputs = [torch.randn(2, 2, 6, 5, 4) for _ in range(5)]
    expected = sum(w * _reference(o, label) for w, o in zip((5, 4, 3, 2, 1), outputs, strict=True))
    assert DeepSupervisionLoss()(outputs, label).item() == pytest.approx(expected.item(), rel=1e-5)


def test_weights_combine_five_to_one() -> None:
    label = _label(seed=3)
    single = segmentation_loss()(torch.zeros(2, 2, 6, 5, 4), label).item()
    perfect = torch.cat([1 - label, label], dim=1) * 40.0 - 20.0
    for index, weight in enumerate((5, 4, 3, 2, 1)):
        outputs = [perfect.clone() for _ in range(5)]
        outputs[index] = torch.zeros(2, 2, 6, 5, 4)
        assert DeepSupervisionLoss()(outputs, label).item() == pytest.approx(weight * single, rel=1e-5)
    uniform = [torch.zeros(2, 2, 6, 5, 4) for _ in range(5)]
    assert DeepSupervisionLoss()(uniform, label).item() == pytest.approx(15 * single, rel=1e-5)


def test_single_tensor_is_the_plain_loss_and_stacked_tensor_is_deep() -> None:
    label = _label(seed=4)
    torch.manual_seed(1)
    main, head = torch.randn(2, 2, 6, 5, 4), torch.randn(2, 2, 6, 5, 4)
    loss = DeepSupervisionLoss(weights=None)
    assert loss(main, label).item() == pytest.approx(_reference(main, label).item(), rel=1e-5)
    stacked = torch.stack([main, head], dim=1)
    expected = _reference(main, label) + 0.5 * _reference(head, label)
    assert loss(stacked, label).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradient_flows_to_every_output() -> None:
    label = _label(seed=5)
    outputs = [torch.randn(2, 2, 6, 5, 4, requires_grad=True) for _ in range(5)]
    DeepSupervisionLoss()(outputs, label).backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="output_activation"):
        segmentation_loss("relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(weights=())
    with pytest.raises(ValueError, match="3 deep-supervision outputs for 5 weights"):
        DeepSupervisionLoss()([torch.zeros(1, 2, 2, 2, 2)] * 3, torch.zeros(1, 1, 2, 2, 2))
