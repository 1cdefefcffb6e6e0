"""One registry for every network: ``register_model``, ``build_model``, ``list_models``.

Variants are registered factory functions that set constructor arguments (the timm way),
so ``build_model("h2aseg-mcsa")`` and ``build_model("h2aseg", use_tamw=False)`` are the same
network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

from torch import Tensor, nn

ModelFactory = Callable[..., nn.Module]

OutputActivation = Literal["softmax", "sigmoid"]
"""How logits become probabilities: softmax over ``C >= 2`` classes (channel 1 is lesion), or a
sigmoid of one lesion channel."""

OUTPUT_ACTIVATIONS: tuple[OutputActivation, ...] = ("softmax", "sigmoid")


@runtime_checkable
class SegmentationNetwork(Protocol):
    """The contract of every registered network (``docs/internals.md``).

    ``model(x)`` maps ``(B, 2, X, Y, Z)`` (channel 0 CT, channel 1 PET) to logits
    ``(B, out_channels, X, Y, Z)``.
    """

    out_channels: int
    output_activation: OutputActivation

    def __call__(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class DeeplySupervised(SegmentationNetwork, Protocol):
    """A network with deep supervision: ``forward_deep(x)`` returns logits at every decoder level,
    finest first, each at input size."""

    def forward_deep(self, x: Tensor) -> list[Tensor]: ...


_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator that registers ``factory`` under ``name`` (lower case, unique)."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    _import_all()
    return sorted(_REGISTRY)


def build_model(name: str, **cfg: object) -> nn.Module:
    """Build the registered network ``name`` with constructor overrides ``cfg``.

    Every network satisfies :class:`SegmentationNetwork`: it takes ``(B, 2, X, Y, Z)`` (channel 0 CT,
    channel 1 PET) and returns logits ``(B, out_channels, X, Y, Z)``.

    Raises:
        ValueError: unknown name, or a factory whose network breaks the contract.
    """
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    model = _REGISTRY[name](**cfg)
    check_contract(model, name)
    return model


def check_contract(model: nn.Module, name: str) -> None:
    """Raise ``ValueError`` unless ``model`` is a :class:`SegmentationNetwork` with a valid activation
    (a sigmoid network has exactly one output channel)."""
    if not isinstance(model, SegmentationNetwork):
        raise ValueError(f"model {name!r} lacks out_channels or output_activation (see SegmentationNetwork)")
    if model.output_activation not in OUTPUT_ACTIVATIONS or int(model.out_channels) < 1:
        raise ValueError(
            f"model {name!r}: output_activation must be one of {OUTPUT_ACTIVATIONS} and out_channels >= 1, "
            f"got {model.output_activation!r} and {model.out_channels}"
        )
    if model.output_activation == "sigmoid" and model.out_channels != 1:
        raise ValueError(
            f"model {name!r}: a sigmoid network must have one output channel, got {model.out_channels}"
        )


def _import_all() -> None:
    """Import the modules whose decorators fill the registry."""
    from h2aseg.models import a2fseg, baselines, h2aseg, nestedformer, sdb, variants  # noqa: F401
