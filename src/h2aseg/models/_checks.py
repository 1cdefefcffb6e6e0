"""Input checks shared by every network: one clear ``ValueError`` instead of a deep shape error."""

from __future__ import annotations

import torch


def validate_input(x: torch.Tensor, in_channels: int = 2, model_name: str = "model") -> None:
    """Check that ``x`` is a float batch ``(B, in_channels, X, Y, Z)``.

    Args:
        x: the network input, expected float ``(B, in_channels, X, Y, Z)`` (channel 0 CT, channel 1 PET).
        in_channels: the number of channels the network was built for.
        model_name: named in the error message.

    Raises:
        ValueError: ``x`` is not a tensor, not 5-D, has the wrong channel count or is not floating point;
            the message gives the expected and the received shape and dtype.
    """
    expected = f"{model_name} expects a float tensor (B, {in_channels}, X, Y, Z)"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{expected}, received {type(x).__name__}")
    received = f"received shape {tuple(x.shape)} dtype {x.dtype}"
    if x.ndim != 5:
        raise ValueError(f"{expected}, {received} ({x.ndim}-D)")
    if x.shape[1] != in_channels:
        raise ValueError(f"{expected}, {received} ({x.shape[1]} channels)")
    if not x.is_floating_point():
        raise ValueError(f"{expected}, {received} (not floating point)")
