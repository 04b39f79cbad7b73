"""The ensemble's parameters: blend weights per model and class, the 2.5D/3D fusion, thresholds,
gates, component sizes and the z clean-up; every step is off at its neutral value."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from src.core.errors import DataError
from src.data.layout import CLASSES

GROUPS = ("2d", "3d")  # blend groups: 3D models vs every other segmenter
N_CLASSES = len(CLASSES)


def _per_class(value, kind=float) -> tuple:
    values = tuple(kind(v) for v in (value if isinstance(value, (list, tuple)) else [value] * N_CLASSES))
    if len(values) != N_CLASSES:
        raise ValueError(f"expected {N_CLASSES} per-class values, got {len(values)}")
    return values


# the type and range (inclusive) of each per-class field as an ensemble file holds it; checked when a
# file is read (the search also builds parameters scaled to its proxies, outside these ranges)
FILE_FIELDS = {"fusion": (float, 0.0, 1.0), "thresholds": (float, 0.0, 1.0), "gate_threshold": (float, 0.0, 1.0),
               "gate_pixels": (int, 0, math.inf), "gate_prob": (float, 0.0, 1.0), "min_size": (int, 0, math.inf),
               "z_min_run": (int, 0, math.inf), "z_largest": (bool, False, True)}
WEIGHT = (float, 0.0, math.inf)


def _check_read(name: str, value, kind: type, low: float, high: float, classes: int = N_CLASSES) -> None:
    """ValueError unless `value` is one `kind` or a list of one per class (of `classes`), finite and in [low, high]."""
    raw = list(value) if isinstance(value, (list, tuple)) else [value] * classes
    if len(raw) != classes:
        raise ValueError(f"{name}: expected {classes} per-class values, got {len(raw)}")
    if kind is bool:
        if not all(isinstance(v, bool) for v in raw):
            raise ValueError(f"{name}: expected true or false per class, got {raw}")
        return
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        raise ValueError(f"{name}: expected numbers, got {raw}")
    if not all(math.isfinite(v) and low <= v <= high for v in raw):
        raise ValueError(f"{name}: {raw} not finite or outside [{low}, {high}]")
    if kind is int and not all(float(v).is_integer() for v in raw):
        raise ValueError(f"{name}: expected whole numbers, got {raw}")


@dataclass(frozen=True)
class EnsembleParams:
    """Everything apply_ensemble needs; per-class tuples are in CLASSES order."""

    weights: dict[str, tuple[float, ...]]  # model name -> per-class weight inside its group
    groups: dict[str, str]  # model name -> "2d" | "3d"
    fusion: tuple[float, ...] = (0.5,) * N_CLASSES  # weight of the 3D group (when both groups are present)
    thresholds: tuple[float, ...] = (0.5,) * N_CLASSES
    gate_threshold: tuple[float, ...] = (0.0,) * N_CLASSES  # classifier presence probability; 0 = off
    gate_pixels: tuple[int, ...] = (0,) * N_CLASSES  # pixel rule: present if more than N pixels ...; 0 = off
    gate_prob: tuple[float, ...] = (0.5,) * N_CLASSES  # ... exceed this probability
    min_size: tuple[int, ...] = (0,) * N_CLASSES  # drop 3D components (26-connected) below N voxels
    z_min_run: tuple[int, ...] = (0,) * N_CLASSES  # drop positive z-runs shorter than k slices; 0 = off
    z_largest: tuple[bool, ...] = (False,) * N_CLASSES  # keep only the z-run with the most voxels
    crop: bool = False  # zero everything outside the detector box

    def __post_init__(self):
        if not isinstance(self.weights, dict) or not isinstance(self.groups, dict):
            raise ValueError("weights and groups must be objects keyed by model name")
        if set(self.weights) != set(self.groups):
            raise ValueError("weights and groups must name the same models")
        if not self.weights:
            raise ValueError("an ensemble needs at least one model")
        bad = {g for g in self.groups.values() if g not in GROUPS}
        if bad:
            raise ValueError(f"unknown blend group(s) {sorted(bad)} (expected {', '.join(GROUPS)})")
        object.__setattr__(self, "weights", {k: _per_class(v) for k, v in self.weights.items()})
        for name, (kind, _, _) in FILE_FIELDS.items():
            object.__setattr__(self, name, _per_class(getattr(self, name), kind))

    @classmethod
    def plain_mean(cls, groups: dict[str, str]) -> EnsembleParams:
        """Equal weights, 3D fusion 0.5, threshold 0.5, no gate and no clean-up."""
        return cls(weights={name: (1.0,) * N_CLASSES for name in groups}, groups=dict(groups))

    @classmethod
    def alone(cls, groups: dict[str, str], name: str) -> EnsembleParams:
        """The plain mean with every weight but `name`'s zero: that model alone at threshold 0.5."""
        return cls(weights={n: (1.0 if n == name else 0.0,) * N_CLASSES for n in groups}, groups=dict(groups))

    def with_model(self, name: str) -> EnsembleParams:
        """A copy with `name` weighted 1 in every class (added to a blend that left it out); where its
        blend group had no weight in a class, the fusion of that class is reset to 0.5 (without_model's
        inverse)."""
        group = self.groups[name]
        out = dataclasses.replace(self, weights={**self.weights, name: (1.0,) * N_CLASSES})
        for c in range(N_CLASSES):
            if not any(w[c] > 0 for n, w in self.weights.items() if self.groups[n] == group):
                out = out.replace_class("fusion", c, 0.5)
        return out

    def replace_class(self, field: str, c: int, value) -> EnsembleParams:
        """A copy with one class's entry of a per-class field changed."""
        values = list(getattr(self, field))
        values[c] = value
        return dataclasses.replace(self, **{field: tuple(values)})

    def replace_weight(self, name: str, c: int, value: float) -> EnsembleParams:
        weights = dict(self.weights)
        row = list(weights[name])
        row[c] = value
        weights[name] = tuple(row)
        return dataclasses.replace(self, weights=weights)

    def without_model(self, name: str) -> EnsembleParams:
        """A copy with `name`'s weights 0 in every class, the others renormalised (where it was the last
        of its blend group with weight in a class, the other group takes that class whole)."""
        group = self.groups[name]
        out = self
        for c in range(N_CLASSES):
            out = out.replace_weight(name, c, 0.0)
            left = any(w[c] > 0 for n, w in out.weights.items() if self.groups[n] == group)
            if self.weights[name][c] > 0 and not left:
                out = out.replace_class("fusion", c, 1.0 if group == "2d" else 0.0)
        return out

    def used_models(self) -> list[str]:
        """The models with an effective blend weight in some class (see effective_weights)."""
        names = list(self.weights)
        return [n for n, row in zip(names, effective_weights(self, names)) if (row > 0).any()]

    def only(self, names: list[str]) -> EnsembleParams:
        """The same parameters restricted to `names` (the ones left out must have no effective weight)."""
        unused = sorted(set(self.used_models()) - set(names))
        if unused:
            raise ValueError(f"models {unused} have weight: they cannot be left out")
        return dataclasses.replace(self, weights={n: self.weights[n] for n in names},
                                   groups={n: self.groups[n] for n in names})

    def blend_key(self, c: int) -> tuple:
        """Hashable: everything class c's blend depends on (the models' class-c weights, groups, fusion)."""
        return tuple(sorted((name, w[c]) for name, w in self.weights.items())), \
            tuple(sorted(self.groups.items())), self.fusion[c]

    def class_key(self, c: int) -> tuple:
        """Hashable: everything class c's masks depend on (its entries of the per-class fields, the
        models' class-c weights, the groups, the crop), so a cache can skip unchanged classes."""
        key = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "weights":
                value = tuple(sorted((name, w[c]) for name, w in value.items()))
            elif f.name == "groups":
                value = tuple(sorted(value.items()))
            elif isinstance(value, tuple):
                value = value[c]
            key.append(value)
        return tuple(key)

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists."""
        def plain(v):
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return list(v) if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "ensemble.json") -> EnsembleParams:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise DataError(f"{source}: unknown ensemble parameter(s) {', '.join(unknown)}")
        try:
            if not isinstance(data.get("weights"), dict):
                raise ValueError("weights: expected an object keyed by model name")
            for name, value in data["weights"].items():
                _check_read(f"weights of {name}", value, *WEIGHT)
            for name, (kind, low, high) in FILE_FIELDS.items():
                if name in data:
                    _check_read(name, data[name], kind, low, high)
            if not isinstance(data.get("crop", False), bool):
                raise ValueError(f"crop: expected true or false, got {data['crop']!r}")
            params = cls(**data)
            effective_weights(params, list(params.weights))  # every class has a model with weight
            return params
        except (TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{source}: bad ensemble parameters ({exc})") from None


def effective_weights(params: EnsembleParams, names: list[str]) -> np.ndarray:
    """(M, 3) blend weights of `names` summing to 1 per class (groups with no weight drop out)."""
    raw = np.array([params.weights[n] for n in names], dtype=np.float64)
    out = np.zeros_like(raw)
    fusion = np.array(params.fusion)
    for group, share in (("2d", 1.0 - fusion), ("3d", fusion)):
        rows = np.array([params.groups[n] == group for n in names])
        total = raw[rows].sum(axis=0)
        out[rows] = np.divide(raw[rows] * share, total, out=np.zeros_like(raw[rows]), where=total > 0)
    total = out.sum(axis=0)
    if (total <= 0).any():
        raise ValueError(f"no model has weight for class {CLASSES[int(np.argmax(total <= 0))]}")
    return out / total
