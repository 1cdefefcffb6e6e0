"""The wrapper that lets a MONAI network take any spatial size: pad the input up to what the network
accepts, crop the logits back (:class:`PadCropNetwork`), and its deeply supervised variant.

Used by the baselines of :mod:`h2aseg.models.baselines`; the contract is that of ``docs/internals.md``:
``(B, 2, X, Y, Z)`` in, logits ``(B, out_channels, X, Y, Z)`` out, ``output_activation = "softmax"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet
from torch import nn
from torch.nn import functional as F

from h2aseg.models._checks import validate_input
from h2aseg.models.registry import OutputActivation

IN_CHANNELS = 2
Size3 = tuple[int, int, int]


class PadCropNetwork(nn.Module):
    """A network that accepts any spatial size: zero-pads the input, runs ``net``, crops the logits back.

    Args:
        net: a 3-D network mapping ``(B, 2, X', Y', Z')`` to ``(B, out_channels, X', Y', Z')``.
        model_name: registry name, used in error messages.
        out_channels: channels of the logits.
        size_multiple: each padded spatial size is the next multiple of this (per axis).
        fixed_size: if given, the network only runs at exactly this size (UNETR): smaller inputs are padded
            up to it, larger ones raise ``ValueError`` (feed them through the sliding-window inferer with
            ``roi_size=fixed_size``).

    Padding is zeros at the high end of each axis; the crop keeps ``[:X, :Y, :Z]``. An input that would
    leave a single voxel in the coarsest feature map gets its first axis padded to twice its multiple, as
    instance and batch normalisation need more than one value there.
    """

    output_activation: OutputActivation = "softmax"

    def __init__(
        self,
        net: nn.Module,
        model_name: str,
        out_channels: int,
        size_multiple: Sequence[int] = (1, 1, 1),
        fixed_size: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(size_multiple) != 3 or min(size_multiple) < 1:
            raise ValueError(f"size_multiple must be 3 positive integers, got {tuple(size_multiple)}")
        self.net = net
        self.model_name = model_name
        self.in_channels = IN_CHANNELS
        self.out_channels = out_channels
        self.size_multiple: Size3 = size3(size_multiple)
        self.fixed_size: Size3 | None = None if fixed_size is None else size3(fixed_size)

    def padded_size(self, spatial: Sequence[int]) -> Size3:
        """Spatial size ``(X', Y', Z')`` at which the wrapped network runs for an input ``spatial``."""
        if self.fixed_size is not None:
            if any(s > f for s, f in zip(spatial, self.fixed_size, strict=True)):
                raise ValueError(
                    f"{self.model_name} runs at img_size {self.fixed_size}, received spatial size "
                    f"{tuple(spatial)}; use sliding-window inference with roi_size={self.fixed_size}"
                )
            return self.fixed_size
        coarsest = [max(math.ceil(s / m), 1) for s, m in zip(spatial, self.size_multiple, strict=True)]
        if coarsest == [1, 1, 1]:
            coarsest[0] = 2
        return size3([c * m for c, m in zip(coarsest, self.size_multiple, strict=True)])

    def _run_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Check ``x``, pad it, run the wrapped network; returns its raw output at the padded size."""
        validate_input(x, self.in_channels, self.model_name)
        spatial = x.shape[2:]
        target = self.padded_size(spatial)
        pad = [p for s, t in zip(reversed(spatial), reversed(target), strict=True) for p in (0, t - s)]
        return self.net(F.pad(x, pad) if any(pad) else x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y, Z)`` for ``x`` ``(B, 2, X, Y, Z)``."""
        logits = self._run_padded(x)
        return _crop(logits, x.shape[2:])


class DeepSupervisedPadCropNetwork(PadCropNetwork):
    """:class:`PadCropNetwork` around a deeply supervised MONAI ``DynUNet``; adds ``forward_deep``.

    MONAI's ``DynUNet`` returns its heads stacked ``(B, 1 + deep_supr_num, C, X, Y, Z)`` in training mode
    and only the main output in eval mode; ``forward`` always returns the main output.
    """

    net: DynUNet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Main logits ``(B, out_channels, X, Y, Z)`` in both training and eval mode."""
        logits = self._run_padded(x)
        if logits.ndim == 6:
            logits = logits[:, 0]
        return _crop(logits, x.shape[2:])

    def forward_deep(self, x: torch.Tensor) -> list[torch.Tensor]:
        """All heads, finest first, each ``(B, out_channels, X, Y, Z)`` (coarse heads nearest-upsampled).

        The heads are read from ``DynUNet.heads``, which the network fills on every forward pass, so the
        list has ``1 + deep_supr_num`` elements in training and in eval mode.
        """
        logits = self._run_padded(x)
        if logits.ndim == 6:
            outputs = list(logits.unbind(dim=1))
        else:
            heads = [F.interpolate(head, size=logits.shape[2:]) for head in self.net.heads]
            outputs = [logits, *heads]
        return [_crop(output, x.shape[2:]) for output in outputs]


def size3(values: Sequence[int]) -> Size3:
    """``values`` as three ints ``(X, Y, Z)``; ``ValueError`` unless there are exactly three."""
    if len(values) != 3:
        raise ValueError(f"expected 3 spatial sizes, got {tuple(values)}")
    return int(values[0]), int(values[1]), int(values[2])


def _crop(logits: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    return logits[..., : spatial[0], : spatial[1], : spatial[2]]
