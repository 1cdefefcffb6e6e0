"""Starting a network at a foreground prior: closed forms, the output layers found from the graph,
every benchmark row, and the config key."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from h2aseg.bench.quality import _model_overrides, available_rows
from h2aseg.config import resolve_config
from h2aseg.inference.checkpoint import build_network
from h2aseg.models.output_prior import output_biases, prior_logits, set_output_prior
from h2aseg.pipeline.demo import phantom_config_path
from h2aseg.training.module import SegmentationModule


class _Head(nn.Module):
    """``(B, 2, X, Y, Z) → (B, C, X, Y, Z)``: a 1³ convolution, cropped and up-sampled like real heads,
    optionally plus a second convolution (a residual branch)."""

    def __init__(self, out_channels: int, residual: bool = False, bias: bool = True) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.output_activation = "sigmoid" if out_channels == 1 else "softmax"
        self.main = nn.Conv3d(2, out_channels, 1, bias=bias)
        self.branch = nn.Conv3d(2, out_channels, 1) if residual else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.main(x[:, :, ::2, ::2, ::2])
        if self.branch is not None:
            y = y + self.branch(x[:, :, ::2, ::2, ::2])
        return nn.functional.interpolate(y, scale_factor=2.0, mode="trilinear")


def _zero_weights(model: nn.Module) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv3d):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.normal_()


@pytest.mark.parametrize("n_outputs, prior", [(2, 0.01), (3, 0.2), (1, 0.05)])
def test_prior_logits_give_the_prior(n_outputs: int, prior: float) -> None:
    logits = prior_logits(prior, n_outputs)
    if n_outputs == 1:
        assert torch.sigmoid(logits).item() == pytest.approx(prior, abs=1e-7)
    else:
        probabilities = torch.softmax(logits, dim=0)
        assert probabilities[0].item() == pytest.approx(1 - prior, abs=1e-7)
        assert probabilities[1:].sum().item() == pytest.approx(prior, abs=1e-7)
    with pytest.raises(ValueError, match="prior"):
        prior_logits(1.0, 2)


@pytest.mark.parametrize("residual", [False, True])
def test_a_network_with_zero_weights_predicts_exactly_the_prior(residual: bool) -> None:
    torch.manual_seed(0)
    model = _Head(2, residual=residual)
    _zero_weights(model)  # random biases: only the prior's can make the output the prior
    assert set_output_prior(model, 0.03, (8, 8, 8)) == (2 if residual else 1)
    probabilities = torch.softmax(model(torch.randn(1, 2, 8, 8, 8)), dim=1)
    torch.testing.assert_close(probabilities[:, 1], torch.full((1, 8, 8, 8), 0.03), rtol=0, atol=1e-6)
    if residual:
        assert torch.equal(model.branch.bias, torch.zeros(2))  # the added branch is zeroed


def test_the_probe_leaves_batch_norm_statistics_alone() -> None:
    model = _Head(2)
    model.main = nn.Sequential(nn.BatchNorm3d(2), nn.Conv3d(2, 2, 1))
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}
    set_output_prior(model, 0.01, (8, 8, 8))
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, before[name]), name


def test_an_output_without_a_bias_is_refused() -> None:
    with pytest.raises(ValueError, match=r"_Head: output 0 .* bias"):
        set_output_prior(_Head(2, bias=False), 0.01, (8, 8, 8))


@pytest.mark.slow
def test_every_benchmark_row_starts_at_the_prior() -> None:
    """Each row of the quality table, at its widths and the phantom patch: every output's nearest bias
    is the prior's logits, and the mean predicted foreground of a random input drops to about it."""
    config_path = phantom_config_path()
    logits = prior_logits(0.01, 2)
    for name in available_rows():
        config = resolve_config(config_path, _model_overrides(name, config_path))
        patch = config["preprocess"]["patch_size"]
        torch.manual_seed(0)
        network = build_network(config)
        assert set_output_prior(network, 0.01, patch) >= 1, name
        for nearest, *_ in output_biases(network, patch):
            torch.testing.assert_close(nearest.detach(), logits.to(nearest), msg=name)
        with torch.no_grad():
            foreground = torch.softmax(network.eval()(torch.randn(1, 2, *patch)), dim=1)[:, 1].mean().item()
        assert foreground < 0.1, (name, foreground)


def test_the_training_module_applies_the_configured_prior() -> None:
    config = resolve_config(phantom_config_path(), ["optim.output_prior=0.02"])
    module = SegmentationModule(config)
    [[nearest], *_] = output_biases(module.model, config["preprocess"]["patch_size"])
    assert (nearest[1] - nearest[0]).item() == pytest.approx(math.log(0.02 / 0.98), abs=1e-6)
    with pytest.raises(ValueError, match=r"optim\.output_prior"):
        resolve_config(phantom_config_path(), ["optim.output_prior=1.5"])
