"""Load the authors' H2ASeg weights: official module names → :class:`~h2aseg.models.h2aseg.H2ASeg`.

The official checkpoint (GitHub ``JinPLu/H2ASeg``) has 269 tensors. The decoder maps one
to one. The two encoders are one grouped network here, so each CT tensor and its PET twin
are concatenated (output channels, CT first); the attention modules are fused, so their
per-direction 1×1×1 convolutions are stacked into the ``query``/``key``/``value``/``out``
tensors of :class:`BDSA`, and the window-merge convolutions and PReLU pairs of
:class:`MCSA` are concatenated like the encoder's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor

N_LEVELS = 5
_MODALITIES = ("ct", "pet")
_KINDS = ("target_target", "source_target")
# Official Sequential indices → our names, per block type.
_FIRST_BLOCK = {
    "conv1": "conv_block.0",
    "act": "conv_block.2",
    "conv2": "conv_block.4",
    "skip": "conv_skip.0",
}
_PREACT_BLOCK = {
    "act_in": "conv_block.1",
    "conv1": "conv_block.2",
    "act_mid": "conv_block.5",
    "conv2": "conv_block.6",
    "act_skip": "conv_skip.1",
    "skip": "conv_skip.2",
}
_PARAMS = {"act": ("weight",), "act_in": ("weight",), "act_mid": ("weight",), "act_skip": ("weight",)}

Builder = Callable[[Callable[[str], Tensor]], Tensor]


def convert_official_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an official H2ASeg state dict onto the default :class:`H2ASeg` (MCSA, TAMW, mean fusion).

    Args:
        sd: the official model's ``state_dict()`` (``encoder.*``/``decoder.*`` names).

    Returns:
        A state dict for ``H2ASeg(channels=num_channels, out_channels=n_classes)`` that loads
        with ``strict=True``.

    Raises:
        ValueError: a tensor the mapping needs is missing, or ``sd`` holds tensors the
            mapping does not use.
    """
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in sd:
            raise ValueError(f"official state dict lacks {name!r}; is it an H2ASeg checkpoint?")
        used.add(name)
        return sd[name]

    converted = {ours: build(take) for ours, build in _mapping()}
    unused = sorted(set(sd) - used)
    if unused:
        raise ValueError(f"official state dict has {len(unused)} tensors with no mapping, e.g. {unused[0]!r}")
    return converted


def _mapping() -> Iterator[tuple[str, Builder]]:
    """Every (our name, how to build it from official tensors) pair."""
    for level in range(N_LEVELS):
        names = _FIRST_BLOCK if level == 0 else _PREACT_BLOCK
        yield from _dual_block(f"encoder.{level}", f"encoder.conv{level + 1}", names)
    for level in (2, 3):
        yield from _mcsa(f"interaction.{level - 2}", f"encoder.sa{level}")
    for level in (4, 5):
        yield from _bdsa(f"interaction.{level - 2}", f"encoder.sa{level}")
    for level in range(1, N_LEVELS):
        yield from _block(f"decoder.{level - 1}", f"decoder.conv{level}", _PREACT_BLOCK)
        for ours, theirs in (("fore", "CA_fore"), ("back", "CA_back")):
            for layer in ("fc1", "fc2"):
                for param in ("weight", "bias"):
                    yield from _copy(
                        f"tamw.{level - 1}.{ours}.{layer}.{param}",
                        f"decoder.tamw{level}.{theirs}.{layer}.{param}",
                    )
    for level in range(1, N_LEVELS + 1):
        yield from _copy(f"heads.{level - 1}.act.weight", f"decoder.output{level}.conv.1.weight")
        for param in ("weight", "bias"):
            yield from _copy(f"heads.{level - 1}.conv.{param}", f"decoder.output{level}.conv.2.{param}")


def _copy(ours: str, theirs: str) -> Iterator[tuple[str, Builder]]:
    yield ours, lambda take: take(theirs)


def _block(ours: str, theirs: str, names: Mapping[str, str]) -> Iterator[tuple[str, Builder]]:
    """A residual block: PReLU weights and conv weights/biases."""
    for ours_name, theirs_name in names.items():
        for param in _PARAMS.get(ours_name, ("weight", "bias")):
            yield from _copy(f"{ours}.{ours_name}.{param}", f"{theirs}.{theirs_name}.{param}")


def _dual_block(ours: str, theirs: str, names: Mapping[str, str]) -> Iterator[tuple[str, Builder]]:
    """A grouped (CT, PET) block: each tensor is the CT one and the PET one concatenated."""
    for ours_name, theirs_name in names.items():
        for param in _PARAMS.get(ours_name, ("weight", "bias")):
            yield (
                f"{ours}.{ours_name}.{param}",
                lambda take, n=f"{theirs_name}.{param}": torch.cat(
                    [take(f"{theirs}_{m}.{n}") for m in _MODALITIES]
                ),
            )


def _bdsa(ours: str, theirs: str) -> Iterator[tuple[str, Builder]]:
    """Stack the seven 1×1×1 convolutions of both directions into BDSA's fused tensors."""

    def stacked(letter: str) -> Builder:
        def build(take: Callable[[str], Tensor]) -> Tensor:
            return torch.stack(
                [
                    torch.stack(
                        [take(f"{theirs}.sa_{m}.{letter}_conv_{kind}.weight").flatten(1) for kind in _KINDS]
                    )
                    for m in _MODALITIES
                ]
            )

        return build

    for letter, name in (("Q", "query"), ("K", "key"), ("V", "value")):
        yield f"{ours}.{name}", stacked(letter)
    yield (
        f"{ours}.out",
        lambda take: torch.stack([take(f"{theirs}.sa_{m}.out.weight").flatten(1) for m in _MODALITIES]),
    )


def _mcsa(ours: str, theirs: str) -> Iterator[tuple[str, Builder]]:
    """Window merge and PReLU pairs concatenated over (CT, PET); the two BDSAs stacked."""
    for param in ("weight", "bias"):
        yield (
            f"{ours}.merge.{param}",
            lambda take, p=param: torch.cat([take(f"{theirs}.win_merge_{m}.{p}") for m in _MODALITIES]),
        )
    for ours_act, index in (("act_inter", 1), ("act_intra", 2)):
        yield (
            f"{ours}.{ours_act}.weight",
            lambda take, i=index: torch.cat([take(f"{theirs}.IR_{m}{i}.1.weight") for m in _MODALITIES]),
        )
    yield from _bdsa(f"{ours}.inter", f"{theirs}.inter_window_attention")
    yield from _bdsa(f"{ours}.intra", f"{theirs}.intra_window_attention.sa")
