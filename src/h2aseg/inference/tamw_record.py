"""Record what TAMW selects: its foreground and background channel weights at each decoder depth.

:class:`TamwRecorder` is a context manager that puts forward hooks on the two channel-weighting
MLPs of every TAMW module of an :class:`~h2aseg.models.h2aseg.H2ASeg` (also inside a wrapper such
as ``h2aseg-pet-only``) and removes them on exit. The hooks only copy tensors the network
computes anyway, so the outputs are bit-identical, and nothing runs when no recorder is open.

Depth ``d`` (1–4, as in the paper's Table 3) is the TAMW module that weights the encoder
features of level ``d``: depth 1 is the finest (full resolution), depth 4 the coarsest. The
weights of one forward are ``(B, 2C + F)``, in the order of :class:`~h2aseg.models.tamw.TAMW`'s
concatenation: ``C`` CT channels, ``C`` PET channels, then ``F`` decoder channels.

Sign convention: the paper (Eq. 4) adds ``W_back ⊙ F_back``, the official code (and
:class:`~h2aseg.models.tamw.TAMW`) subtracts its background MLP's output. The records keep the
MLP outputs as computed; :meth:`DepthRecord.weights` returns the paper's ``W``: the foreground
output, and the negated background output, so that a positive weight always adds to the
masked feature (emphasis) and a negative one takes from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from h2aseg.models.h2aseg import H2ASeg

Modality = Literal["ct", "pet"]
Side = Literal["fore", "back"]
SIDES: tuple[Side, Side] = ("fore", "back")
Hook = Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]


def find_tamw_network(model: nn.Module) -> H2ASeg:
    """The H2ASeg inside ``model`` (itself or a submodule); a ``ValueError`` unless it has TAMW."""
    network = next((module for module in model.modules() if isinstance(module, H2ASeg)), None)
    if network is None or not network.use_tamw:
        raise ValueError(f"{type(model).__name__} has no TAMW module (an H2ASeg with use_tamw=True)")
    return network


@dataclass
class DepthRecord:
    """The weights TAMW gave at one depth over every forward since the recorder opened.

    Attributes:
        encoder_channels: ``C``, channels of one modality at this depth.
        fore, back: the foreground and background MLP outputs (``(-1, 1)``, TAMW subtracts the
            background one), one ``(B, 2C + F)`` float32 CPU tensor per forward, in call order.
        features: when features are kept, one ``(B, 2C, X, Y, Z)`` CPU tensor of the CT and
            PET encoder features (CT first) that this TAMW weighted, per forward.
    """

    encoder_channels: int
    fore: list[Tensor] = field(default_factory=list)
    back: list[Tensor] = field(default_factory=list)
    features: list[Tensor] = field(default_factory=list)

    def weights(self, side: Side, modality: Modality) -> Tensor:
        """The paper's ``W_side`` of ``modality``'s channels, ``(windows, C)``, every forward stacked.

        ``W_fore`` is the foreground MLP's output, ``W_back`` the negated background MLP's output
        (the sign with which it enters TAMW's sum): > 0 emphasises the masked feature.
        """
        stacked = torch.cat(self.fore, dim=0) if side == "fore" else -torch.cat(self.back, dim=0)
        c = self.encoder_channels
        return stacked[:, :c] if modality == "ct" else stacked[:, c : 2 * c]


class TamwRecorder:
    """Context manager recording the TAMW weights (and optionally features) of every forward.

    Args:
        model: a network containing an H2ASeg with TAMW.
        feature_depths: depths (1–4) whose CT/PET encoder features entering TAMW are kept too
            (memory: a whole window's features per forward; empty by default).

    Example:
        >>> model = H2ASeg(channels=(2, 4, 8, 16, 32)).eval()
        >>> with TamwRecorder(model) as recorder:
        ...     _ = model(torch.randn(1, 2, 32, 32, 16))
        >>> recorder.depths[1].weights("fore", "pet").shape
        torch.Size([1, 2])
    """

    def __init__(self, model: nn.Module, feature_depths: tuple[int, ...] = ()) -> None:
        self.network = find_tamw_network(model)
        n_depths = len(self.network.tamw)
        if any(not 1 <= depth <= n_depths for depth in feature_depths):
            raise ValueError(f"feature depths must lie in 1..{n_depths}, got {feature_depths}")
        self.feature_depths = tuple(feature_depths)
        self.depths: dict[int, DepthRecord] = {}
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> TamwRecorder:
        self.depths = {
            depth: DepthRecord(tamw.encoder_channels) for depth, tamw in enumerate(self.network.tamw, 1)
        }
        for depth, tamw in enumerate(self.network.tamw, 1):
            record = self.depths[depth]
            self._handles.append(tamw.fore.register_forward_hook(_keep_output(record.fore)))
            self._handles.append(tamw.back.register_forward_hook(_keep_output(record.back)))
            if depth in self.feature_depths:
                self._handles.append(tamw.register_forward_hook(_keep_first_input(record.features)))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _keep_output(store: list[Tensor]) -> Hook:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        store.append(output.detach().float().cpu())

    return hook


def _keep_first_input(store: list[Tensor]) -> Hook:
    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        store.append(inputs[0].detach().float().cpu())

    return hook


def emphasis_shares(depths: Mapping[int, DepthRecord]) -> dict[int, dict[str, float]]:
    """Share (%) of CT and PET channels with a positive foreground / background weight.

    "Emphasised" is the paper's reading of Eq. 3-4 (Sect. 2.2): a channel whose weight ``W``
    (:meth:`DepthRecord.weights`, the paper's sign) is greater than 0. Every recorded forward
    (sliding window) counts equally: the share is over all ``windows × C`` weights of the modality.

    Returns:
        ``{depth: {"fore_pet", "fore_ct", "back_pet", "back_ct": percent}}``.
    """
    shares: dict[int, dict[str, float]] = {}
    for depth, record in sorted(depths.items()):
        if not record.fore:
            raise ValueError(f"TAMW depth {depth}: no forward was recorded")
        shares[depth] = {
            f"{side}_{modality}": 100.0 * float((record.weights(side, modality) > 0).float().mean())
            for side in SIDES
            for modality in ("pet", "ct")
        }
    return shares
