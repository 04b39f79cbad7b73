"""Architecture registry: names a Kaggle user recognises (`unetpp_effb4`) -> model builders.

Like timm: small factories registered by a decorator, `list_archs(pattern)` to discover them,
`create_model(name, **overrides)` to build one. Every stage (2.5D, classifier, 3D, detector)
registers its own archs here under its `stage`, so `--list-archs` shows them all.
"""
from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class ArchSpec:
    name: str
    stage: str  # seg2d | cls | seg3d | det
    builder: Callable[..., nn.Module]
    description: str


_REGISTRY: dict[str, ArchSpec] = {}
# Modules whose import registers archs; a new model family adds its module here.
ARCH_MODULES = ("src.models.seg2d", "src.models.seg3d", "src.models.classifier", "src.models.detector",
                "src.models.unet_classic")


def register_arch(name: str, stage: str, description: str):
    """Decorator registering a builder `fn(**kwargs) -> nn.Module` under `name`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"arch {name!r} registered twice")
        _REGISTRY[name] = ArchSpec(name, stage, fn, description)
        return fn

    return wrap


def _load_all() -> None:
    """Import the modules that register archs (import side effect, once)."""
    for module in ARCH_MODULES:
        importlib.import_module(module)


def list_archs(pattern: str = "*", stage: str | None = None) -> list[ArchSpec]:
    _load_all()
    return [s for n, s in sorted(_REGISTRY.items())
            if fnmatch.fnmatch(n, pattern) and (stage is None or s.stage == stage)]


def get_arch(name: str) -> ArchSpec:
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown arch {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    return get_arch(name).builder(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _build_for_count(name: str) -> nn.Module:
    """Build on the meta device (no memory, no init cost) where the arch allows it."""
    import torch

    try:
        with torch.device("meta"):
            return create_model(name)
    except RuntimeError:  # some builders read tensor values while constructing
        return create_model(name)


def list_archs_table(stage: str | None = None) -> str:
    """Every registered arch (of `stage`) with its parameter count, one line each."""
    lines = [f"{'arch':<22} {'stage':<6} {'params':>10}  description"]
    for spec in list_archs(stage=stage):
        params = count_parameters(_build_for_count(spec.name))
        lines.append(f"{spec.name:<22} {spec.stage:<6} {params / 1e6:>9.2f}M  {spec.description}")
    return "\n".join(lines)
