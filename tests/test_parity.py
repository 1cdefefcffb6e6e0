"""Number-for-number parity with the authors' H2ASeg (official weights, inputs and outputs).

The fixtures were made by running the official code (GitHub ``JinPLu/H2ASeg``, commit
``8e6caea``) in eval mode; see ``tests/data/official-parity/SOURCE.md``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from h2aseg.models.convert import convert_official_state_dict
from h2aseg.models.h2aseg import H2ASeg

TOLERANCE = 1e-4
TINY_FIXTURE = Path(__file__).parent / "data" / "official-parity" / "h2aseg_official_tiny_32x32x16.pt"


def load_fixture(path: Path) -> dict:
    if not path.exists():
        pytest.skip(f"parity fixture {path} is absent")
    return torch.load(path, weights_only=True)


def official_model(fixture: dict) -> H2ASeg:
    config = fixture["config"]
    model = H2ASeg(
        out_channels=config["n_classes"],
        channels=config["num_channels"],
        window_size=tuple(config["window_size"]),
    )
    model.load_state_dict(convert_official_state_dict(fixture["state_dict"]), strict=True)
    return model.eval()


def check_parity(fixture: dict) -> None:
    model = official_model(fixture)
    x = torch.cat((fixture["ct"], fixture["pet"]), dim=1)
    with torch.no_grad():
        predictions = model.forward_deep(x)
        finest = model(x)
        features = model.encode(x)
    for level, (ours, theirs) in enumerate(zip(predictions, fixture["preds"], strict=True), start=1):
        torch.testing.assert_close(ours, theirs, atol=TOLERANCE, rtol=0, msg=f"pred{level}")
    torch.testing.assert_close(finest, fixture["preds"][0], atol=TOLERANCE, rtol=0)
    for level in range(2, 6):
        for modality, feature in zip(("ct", "pet"), features[level - 1], strict=True):
            expected = fixture["encoder"][f"{modality}{level}"]
            torch.testing.assert_close(feature, expected, atol=TOLERANCE, rtol=0, msg=f"{modality}{level}")


def test_parity_tiny_fixture() -> None:
    check_parity(load_fixture(TINY_FIXTURE))


@pytest.mark.slow
def test_parity_default_configuration(shared_data: Path) -> None:
    check_parity(load_fixture(shared_data / "official-parity" / "h2aseg_official_64x64x32.pt"))


def test_converter_maps_all_269_official_tensors() -> None:
    state_dict = load_fixture(TINY_FIXTURE)["state_dict"]
    assert len(state_dict) == 269
    converted = convert_official_state_dict(state_dict)
    assert sum(t.numel() for t in converted.values()) == sum(t.numel() for t in state_dict.values())


def test_converter_rejects_missing_and_unknown_tensors() -> None:
    state_dict = dict(load_fixture(TINY_FIXTURE)["state_dict"])
    missing = {k: v for k, v in state_dict.items() if k != "decoder.tamw2.CA_fore.fc1.bias"}
    with pytest.raises(ValueError, match=r"lacks 'decoder\.tamw2\.CA_fore\.fc1\.bias'"):
        convert_official_state_dict(missing)
    with pytest.raises(ValueError, match=r"1 tensors with no mapping, e\.g\. 'decoder\.extra\.weight'"):
        convert_official_state_dict({**state_dict, "decoder.extra.weight": torch.zeros(1)})
