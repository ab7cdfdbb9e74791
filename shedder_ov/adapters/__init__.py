"""Registry of per-family adapters, keyed by transformers `model_type`."""

from __future__ import annotations

from ..errors import ShedderError
from .base import FamilyAdapter, MambaFamilyAdapter, count_params
from .components import HEADED, REPEATABLE, TARGETS, Candidate, Target
from .falcon_h1 import FalconH1Adapter
from .granitemoehybrid import GraniteMoeHybridAdapter
from .mamba import FalconMambaAdapter, MambaAdapter
from .mamba2 import Mamba2Adapter
from .zamba2 import Zamba2Adapter

_FAMILIES = (MambaAdapter, FalconMambaAdapter, Mamba2Adapter, Zamba2Adapter, FalconH1Adapter, GraniteMoeHybridAdapter)
ADAPTERS: dict[str, type[FamilyAdapter]] = {model_type: adapter for adapter in _FAMILIES for model_type in adapter.model_types}


def supported_model_types() -> list[str]:
    return sorted(ADAPTERS)


def adapter_class_for(model_type: str, source: str = "model") -> type[FamilyAdapter]:
    if model_type not in ADAPTERS:
        raise ShedderError(
            f"{source}: unsupported architecture model_type={model_type!r} (supported: {', '.join(supported_model_types())})"
        )
    return ADAPTERS[model_type]


def adapter_for(model, source: str = "model") -> FamilyAdapter:
    return adapter_class_for(model.config.model_type, source)(model)


__all__ = [
    "ADAPTERS",
    "HEADED",
    "REPEATABLE",
    "TARGETS",
    "Candidate",
    "FamilyAdapter",
    "MambaFamilyAdapter",
    "Target",
    "adapter_class_for",
    "adapter_for",
    "count_params",
    "supported_model_types",
]
