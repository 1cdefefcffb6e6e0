"""One registry for every network: ``register_model``, ``build_model``, ``list_models``.

Variants are registered factory functions that set constructor arguments (the timm way),
so ``build_model("h2aseg-mcsa")`` and ``build_model("h2aseg", use_tamw=False)`` are the same
network.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]

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

    Every network takes ``(B, 2, X, Y, Z)`` (channel 0 CT, channel 1 PET) and returns logits
    ``(B, out_channels, X, Y, Z)``.
    """
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**cfg)


def _import_all() -> None:
    """Import the modules whose decorators fill the registry."""
    from h2aseg.models import a2fseg, baselines, h2aseg, nestedformer, sdb, variants  # noqa: F401
