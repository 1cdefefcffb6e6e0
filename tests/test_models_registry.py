"""Every registered network, driven by the registry (timm style): shape, gradients, attributes, bad input."""

from __future__ import annotations

import pytest
import torch
from monai.utils import optional_import

from h2aseg.models import build_model, list_models
from h2aseg.models._checks import validate_input
from h2aseg.models.baselines import nnunet_kernels_strides
from h2aseg.training.loss import segmentation_loss

HAS_EINOPS = optional_import("einops")[1]
NEEDS_EINOPS = {"unetr", "swin-unetr"}
SIZE = (32, 32, 32)
ODD_SIZE = (9, 17, 7)  # padded to one multiple per axis, the first axis doubled: a 2-voxel bottleneck
# H2ASeg (5 variants) is the slowest on CPU: the official tiny parity patch, and an odd size just below it.
H2ASEG_SIZE = (32, 32, 16)
H2ASEG_ODD_SIZE = (30, 27, 13)

# Widths small enough for a CPU test; VNet has fixed widths.
SMALL = {
    "unet3d": {"features": (4, 4, 8, 16, 32, 4)},
    "vnet": {},
    "resunet3d": {"channels": (4, 8, 16, 32), "num_res_units": 1},
    "unetr": {"img_size": SIZE, "feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2},
    "swin-unetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
    "dynunet": {"patch_size": SIZE, "spacing_mm": (1.0, 1.0, 1.0), "filters": (4, 8, 16, 32)},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1, 1)},
    "a2fseg": {"patch_size": SIZE, "spacing_mm": (1.0, 1.0, 1.0), "filters": (4, 8, 16, 32)},
    "sdb": {"features": (4, 8, 16, 32)},
    "nestedformer": {"features": (4, 4, 8, 8, 16, 4), "reference_size": SIZE, "heads": 2},
}


def small_overrides(name: str) -> dict:
    if name.startswith("h2aseg"):
        return {"channels": (2, 4, 8, 16, 32)}
    return SMALL.get(name, {})


def sizes_for(name: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    if name.startswith("h2aseg"):
        return H2ASEG_SIZE, H2ASEG_ODD_SIZE
    if name == "vnet":  # fixed widths, 45 M parameters: the smallest size with a 2-voxel bottleneck
        return (32, 16, 16), ODD_SIZE
    return SIZE, ODD_SIZE


def build_small(name: str) -> torch.nn.Module:
    if name in NEEDS_EINOPS and not HAS_EINOPS:
        pytest.skip(f"{name} needs einops (MONAI optional dependency), not installed")
    torch.manual_seed(0)
    return build_model(name, **small_overrides(name))


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shape_and_attributes(name: str) -> None:
    model = build_small(name)
    assert isinstance(model.out_channels, int)
    assert model.output_activation in {"softmax", "sigmoid"}
    size, _ = sizes_for(name)
    x = torch.randn(1, 2, *size, generator=torch.Generator().manual_seed(1))

    model.train()
    outputs = model.forward_deep(x) if hasattr(model, "forward_deep") else [model(x)]
    for output in outputs:
        assert output.shape == (1, model.out_channels, *size)
    loss = sum(output.float().square().mean() for output in outputs)
    if hasattr(model, "auxiliary_loss"):  # branch heads and consistency terms (A2FSeg, SDB)
        label = torch.randint(
            0, model.out_channels, (1, 1, *size), generator=torch.Generator().manual_seed(2)
        )
        loss = loss + model.auxiliary_loss(label.float(), segmentation_loss(model.output_activation))
    loss.backward()

    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert sum(bool(g.abs().sum() > 0) for g in grads.values()) > len(grads) // 2


@pytest.mark.parametrize("name", list_models())
def test_any_input_size_and_bad_input(name: str) -> None:
    model = build_small(name).eval()
    _, odd_size = sizes_for(name)
    with torch.no_grad():
        logits = model(torch.randn(1, 2, *odd_size))
    assert logits.shape == (1, model.out_channels, *odd_size)

    for bad in (torch.randn(2, *SIZE), torch.randn(1, 3, *SIZE), torch.ones(1, 2, *SIZE, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"expects a float tensor \(B, 2, X, Y, Z\).*received"):
            model(bad)


@pytest.mark.skipif(HAS_EINOPS, reason="checks the message shown when einops is missing")
@pytest.mark.parametrize("name", sorted(NEEDS_EINOPS))
def test_transformer_models_name_missing_einops(name: str) -> None:
    with pytest.raises(ImportError, match="einops"):
        build_model(name, **SMALL[name])


def test_unetr_rejects_input_larger_than_img_size() -> None:
    if not HAS_EINOPS:
        pytest.skip("unetr needs einops (MONAI optional dependency), not installed")
    model = build_model("unetr", **SMALL["unetr"])
    with pytest.raises(ValueError, match=r"img_size \(32, 32, 32\).*roi_size"):
        model(torch.randn(1, 2, 48, 32, 32))


def test_dynunet_deep_supervision_heads() -> None:
    torch.manual_seed(0)
    model = build_model("dynunet", **SMALL["dynunet"], deep_supervision=True, deep_supr_num=2)
    x = torch.randn(1, 2, *ODD_SIZE)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            heads = model.forward_deep(x)
            main = model(x)
        assert len(heads) == 3
        assert all(head.shape == (1, 2, *ODD_SIZE) for head in heads)
        torch.testing.assert_close(heads[0], main)


def test_nnunet_kernels_strides_autopet_patch() -> None:
    kernels, strides = nnunet_kernels_strides((128, 128, 64), (2.0, 2.0, 3.0))
    assert strides == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 3]] * 6


def test_nnunet_kernels_strides_anisotropic_axis_waits() -> None:
    # z spacing 5 mm vs 1 mm in-plane: z is neither pooled nor convolved until x, y catch up (ratio <= 2).
    kernels, strides = nnunet_kernels_strides((64, 64, 16), (1.0, 1.0, 5.0))
    assert strides[:3] == [[1, 1, 1], [2, 2, 1], [2, 2, 1]]
    assert kernels[:2] == [[3, 3, 1], [3, 3, 1]]
    assert strides[3] == [2, 2, 2]


def test_validate_input_messages() -> None:
    validate_input(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, 2, X, Y, Z\), received shape \(1, 1, 4, 4, 4\)"):
        validate_input(torch.zeros(1, 1, 4, 4, 4), model_name="vnet")
    with pytest.raises(ValueError, match="received ndarray"):
        validate_input(torch.zeros(1, 2, 4, 4, 4).numpy())
