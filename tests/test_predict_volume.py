"""``Predictor.predict_volume``: flips batched within each window, windows of air skipped."""

from __future__ import annotations

import torch
from torch import nn

from h2aseg.inference.predictor import Predictor

BODY = (slice(14, 26), slice(12, 24), slice(8, 16))


class Biased(nn.Module):
    """Softmax head with a lesion logit that depends on position and PET (not flip-equivariant)."""

    out_channels = 2
    output_activation = "softmax"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, 3, padding=1)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight)
        nn.init.constant_(self.conv.bias, -1.0)  # p(lesion) ≈ 0.27 in air: visible if air is run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lesion = self.conv(x) + torch.linspace(0, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        return torch.cat([torch.zeros_like(lesion), lesion], dim=1)


def _config(patch: tuple[int, int, int], overlap: float) -> dict:
    inference = {"sw_batch_size": 3, "overlap": overlap, "mode": "gaussian", "tta_flips": False}
    return {"preprocess": {"patch_size": list(patch)}, "inference": inference}


def _body_volume() -> torch.Tensor:
    """``(1, 2, 40, 36, 24)``: air (0, 0) around a body box of soft tissue and PET uptake."""
    image = torch.zeros(1, 2, 40, 36, 24)
    body = torch.rand(2, 12, 12, 8, generator=torch.Generator().manual_seed(1)) * 0.2
    image[0, :, BODY[0], BODY[1], BODY[2]] = body + torch.tensor([0.5, 0.05]).view(2, 1, 1, 1)
    return image


def test_air_windows_get_background_and_body_windows_are_unchanged() -> None:
    image, network = _body_volume(), Biased()
    tiles = Predictor(network, _config((8, 8, 8), overlap=0.0)).predict_volume(image)[0, 1]
    every = Predictor(network, _config((8, 8, 8), overlap=0.0), skip_air=False).predict_volume(image)[0, 1]
    body = torch.zeros(40, 36, 24, dtype=torch.bool)
    body[BODY] = True
    for i in range(0, 40, 8):  # with overlap 0 the windows tile the volume
        for j in range(0, 36, 8):
            for k in range(0, 24, 8):
                tile = (slice(i, i + 8), slice(j, j + 8), slice(k, k + 8))
                if body[tile].any():
                    torch.testing.assert_close(tiles[tile], every[tile])
                else:
                    assert torch.all(tiles[tile] == 0.0) and every[tile].min() > 0.1
    overlapping = Predictor(network, _config((16, 16, 8), overlap=0.5))
    run_all = Predictor(network, _config((16, 16, 8), overlap=0.5), skip_air=False)
    # body voxels lie in body windows only, so blending leaves them as without skipping
    torch.testing.assert_close(
        overlapping.predict_volume(image)[0, 1][body], run_all.predict_volume(image)[0, 1][body]
    )


def test_tta_averages_the_unflipped_probabilities_of_every_flip() -> None:
    image, network = _body_volume(), Biased()
    predictor = Predictor(network, _config((40, 36, 24), overlap=0.0), tta=True)  # one window
    expected = torch.zeros(1, 2, 40, 36, 24)
    with torch.no_grad():
        for axes in predictor.flips:
            dims = [axis + 2 for axis in axes]
            flipped = image.flip(dims) if dims else image
            probabilities = torch.softmax(network(flipped), dim=1)
            expected += probabilities.flip(dims) if dims else probabilities
    assert len(predictor.flips) == 8
    torch.testing.assert_close(predictor.predict_volume(image), expected / 8, atol=1e-5, rtol=0)
