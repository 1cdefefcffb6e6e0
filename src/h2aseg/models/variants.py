"""Reference variants used by the benchmarks: a network that sees PET alone.

``h2aseg-pet-only`` is H2ASeg whose CT channel is zeroed on entry, so it is trained and run on
PET alone with the same architecture, budget and interface (``(B, 2, X, Y, Z)`` in). It is the
row of the quality benchmark that shows how much the CT contributes.
"""

from __future__ import annotations

import torch
from torch import nn

from h2aseg.models.registry import build_model, register_model


class PetOnly(nn.Module):
    """Wraps a two-channel network and zeroes its CT channel (channel 0) on every call.

    Args:
        network: any model of the registry; ``forward_deep`` is passed through when it has one.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.out_channels: int = network.out_channels
        self.output_activation: str = network.output_activation

    @staticmethod
    def _pet_only(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, X, Y, Z)`` → logits ``(B, out_channels, X, Y, Z)`` computed from the PET alone."""
        return self.network(self._pet_only(x))

    def forward_deep(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The wrapped network's deep-supervision outputs, from the PET alone."""
        return self.network.forward_deep(self._pet_only(x))


@register_model("h2aseg-pet-only")
def h2aseg_pet_only(**cfg: object) -> PetOnly:
    """H2ASeg (same arguments as ``h2aseg``) trained and run on PET alone (CT channel zeroed)."""
    return PetOnly(build_model("h2aseg", **cfg))
