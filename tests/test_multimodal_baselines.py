"""The multi-modal baselines of Table 1: what makes each that method, and one real training step each."""

from __future__ import annotations

import math

import pytest
import torch
from monai.inferers import sliding_window_inference

from h2aseg.config import resolve_config
from h2aseg.models import build_model
from h2aseg.models.fusion_blocks import pad_input
from h2aseg.models.nestedformer import WindowAttention, _resample
from h2aseg.pipeline.demo import phantom_config_path
from h2aseg.training.module import SegmentationModule

SMALL = {
    "a2fseg": {"patch_size": (32, 32, 32), "spacing_mm": (1.0, 1.0, 1.0), "filters": (4, 8, 16, 32)},
    "sdb": {"features": (4, 8, 16)},
    "nestedformer": {"features": (4, 4, 8, 8, 16, 4), "reference_size": (32, 32, 32), "heads": 2},
}
ODD = (19, 13, 9)


def _small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, **SMALL[name])


def _input(*size: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 2, *size, generator=torch.Generator().manual_seed(seed))


def test_a2fseg_fusion_weights_are_a_softmax_over_the_modalities() -> None:
    model = _small("a2fseg").eval()
    with torch.no_grad():
        weights = model.fusion_weights(_input(*ODD, batch=2))
    assert weights.shape == (2, 2, 4, 24, 16, 16)  # (B, modality, filters[0], grid padded to multiples of 8)
    assert (weights > 0).all() and (weights < 1).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 4, 24, 16, 16))


def test_a2fseg_deep_supervision_weights_follow_nnunet() -> None:
    model = _small("a2fseg").train()
    model(_input(*ODD))
    calls = []

    def one_per_head(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        calls.append((logits.shape[2:], label.shape[2:]))
        return logits.new_ones(())

    # Three branches (CT, PET, average fusion), heads on the 2 finest of 3 decoder levels: 1 + 1/2 each.
    loss = model.auxiliary_loss(torch.zeros(1, 1, *ODD, dtype=torch.long), one_per_head)  # integer classes
    assert loss.item() == pytest.approx(3 * (1 + 0.5))
    assert len(calls) == 6 and all(logits == label for logits, label in calls)
    assert {logits for logits, _ in calls} == {(24, 16, 16), (12, 8, 8)}
    with pytest.raises(RuntimeError, match="training-mode forward"):
        model.auxiliary_loss(torch.zeros(1, 1, *ODD), one_per_head)


def test_sdb_shares_its_downsampling_blocks_between_ct_and_pet() -> None:
    model = _small("sdb").train()
    calls = {id(block): 0 for block in model.shared_down}
    for block in model.shared_down:
        block.register_forward_hook(
            lambda module, args, out: calls.__setitem__(id(module), calls[id(module)] + 1)
        )
    ct, pet = model.encode(_input(16, 16, 16))
    assert list(calls.values()) == [2, 2]  # each shared block runs once per modality
    shared = list(model.shared_down.parameters())
    for stream in (ct, pet):  # the deepest features of each modality depend on the shared weights
        gradients = torch.autograd.grad(stream[-1].square().mean(), shared, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in gradients)
    modality_specific = {id(p) for p in model.encoders.parameters()}
    assert modality_specific.isdisjoint(id(p) for p in shared)


def test_sdb_fusion_maps_and_consistency_term() -> None:
    model = build_model("sdb", **SMALL["sdb"], branch_weight=0.0, consistency_weight=1.0).train()
    x = _input(*ODD)
    with torch.no_grad():
        maps = model.fusion_maps(x)
        model(x)
        _, (ct, pet), _ = model._run(pad_input(x, model.size_multiple))
        loss = model.auxiliary_loss(torch.zeros(1, 1, *ODD), lambda logits, label: logits.sum())
    assert maps.shape == (1, 2, *ODD)
    torch.testing.assert_close(maps.sum(dim=1), torch.ones(1, *ODD))
    crop = (..., slice(0, ODD[0]), slice(0, ODD[1]), slice(0, ODD[2]))
    expected = (ct[crop].softmax(1) - pet[crop].softmax(1)).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > 0


def test_nestedformer_cross_modal_tokens_see_both_modalities() -> None:
    model = _small("nestedformer").eval()
    cross = model.cross_modal
    ct = torch.randn(1, 16, 2, 3, 2, requires_grad=True)
    pet = torch.randn(1, 16, 2, 3, 2, requires_grad=True)
    query = torch.randn(1, 2, 3, 2, 16)
    tokens = cross.modality_tokens((ct, pet))
    assert tokens.shape == (1, 2 * 32, 16)  # 32 learned tokens per modality
    ct_tokens, pet_tokens = tokens[:, :32], tokens[:, 32:]
    # Each modality's tokens come from that modality alone ...
    assert not torch.autograd.grad(ct_tokens.sum(), pet, retain_graph=True)[0].any()
    assert not torch.autograd.grad(pet_tokens.sum(), ct, retain_graph=True)[0].any()
    # ... and every voxel's output attends to the tokens of both modalities.
    # (A random projection: the sum and the squared norm of a layer-normed vector are constant.)
    voxel = cross(query, (ct, pet))[0, 1, 2, 0] @ torch.randn(16)
    grad_ct, grad_pet = torch.autograd.grad(voxel, (ct, pet))
    assert grad_ct.abs().sum() > 0 and grad_pet.abs().sum() > 0


def test_nestedformer_size_bound_parameters_are_exact_at_the_reference_size() -> None:
    model = _small("nestedformer")
    gain = model.encoders[0].stages[0][2].mix.gain
    assert gain.shape == (1, 1, 16, 16, 16)  # the level-2 grid of the 32^3 reference
    assert _resample(gain, (16, 16, 16)) is gain
    assert _resample(gain, (8, 12, 4)).shape == (1, 1, 8, 12, 4)


def test_nestedformer_window_attention_masks_the_padding() -> None:
    torch.manual_seed(0)
    attention = WindowAttention(channels=8, heads=2, window=(2, 2, 2)).eval()
    x = torch.randn(1, 3, 2, 3, 8)  # (B, X, Y, Z, C): axes 0 and 2 need padding to the window
    out = attention(x)
    # Reference: attention inside each window over its real voxels only, one window at a time.
    reference = torch.empty_like(x)
    mha = attention.attention
    for wx in range(2):
        for wz in range(2):
            idx = [
                (i, j, k)
                for i in range(2 * wx, min(2 * wx + 2, 3))
                for j in range(2)
                for k in range(2 * wz, min(2 * wz + 2, 3))
            ]
            tokens = torch.stack([x[0, i, j, k] for i, j, k in idx])[None]
            offsets = torch.tensor([[a[d] - b[d] + 1 for d in range(3)] for a in idx for b in idx])
            bias = attention.relative_bias[offsets[:, 0], offsets[:, 1], offsets[:, 2]].reshape(
                len(idx), len(idx)
            )
            result = mha(tokens, bias=bias)[0]
            for n, (i, j, k) in enumerate(idx):
                reference[0, i, j, k] = result[n]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)


def test_nestedformer_sliding_window_prediction_at_another_size() -> None:
    model = _small("nestedformer").eval()
    volume = _input(40, 36, 20)
    with torch.no_grad():
        logits = sliding_window_inference(
            volume, (32, 32, 16), sw_batch_size=2, predictor=model, overlap=0.25
        )
    assert logits.shape == (1, 2, 40, 36, 20) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_one_training_step_through_the_segmentation_module(name: str) -> None:
    overrides = [f"model.name={name}"] + [
        f"model.{key}={list(value) if isinstance(value, tuple) else value}"
        for key, value in SMALL[name].items()
    ]
    module = SegmentationModule(resolve_config(phantom_config_path(), overrides))
    module.train()
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 2, *ODD, generator=generator)
    label = (torch.rand(2, 1, *ODD, generator=generator) > 0.8).to(torch.uint8)
    optimiser = module.configure_optimizers()["optimizer"]
    before = [p.detach().clone() for p in module.model.parameters()]
    loss = module.training_step({"image": image, "label": label}, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    if hasattr(module.model, "auxiliary_loss"):  # the module added the branch / consistency terms
        torch.manual_seed(0)
        with torch.no_grad():
            logits = module.model(image)
            main = module.loss(logits, label.float())
            auxiliary = module.model.auxiliary_loss(label.float(), module.loss.per_output_loss)
        assert auxiliary.item() > 0
        assert loss.item() == pytest.approx(main.item() + auxiliary.item(), rel=1e-4)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.model.parameters())
    optimiser.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, module.model.parameters(), strict=True)]
    assert sum(changed) > 0.9 * len(changed)
    assert math.isfinite(loss.item())
