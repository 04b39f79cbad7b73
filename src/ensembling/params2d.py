"""The 2D ensemble's parameters (`ImageEnsembleParams`): per model and class blend weights, and per
class the threshold, the classifier gate, the minimum connected-component size and hole filling,
applied in that order by src.ensembling.postprocess2d.index_map. Per-class tuples follow the dataset
description's labels.

Component sizes are stored as fractions of the image's area (`min_area`): a component of class k is
dropped when it has fewer than min_area[k] x H x W pixels of its H x W image. So one value works at
any image size (nnU-Net 2D sets mix sizes, Carvana's test images are its train images' size) and on
the tuner's proxies, whose pixels stand for stride^2 pixels each, without rescaling.

Neutral values leave a step off (gate_threshold 0, min_area 0, fill_holes false); the plain mean (equal weights, the
runs' validation threshold) gives exactly the validation's label_map of the runs' mean.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from src.core.errors import DataError
from src.ensembling.params import WEIGHT, _check_read

# the type and range (inclusive) of each per-class field as an ensemble file holds it
FILE_FIELDS = {"thresholds": (float, 0.0, 1.0), "gate_threshold": (float, 0.0, 1.0), "min_area": (float, 0.0, 1.0),
               "fill_holes": (bool, False, True)}


def _per_class(value, n: int, kind=float) -> tuple:
    values = tuple(kind(v) for v in (value if isinstance(value, (list, tuple)) else [value] * n))
    if len(values) != n:
        raise ValueError(f"expected {n} per-class values, got {len(values)}")
    return values


@dataclass(frozen=True)
class ImageEnsembleParams:
    """Everything index_map needs; `thresholds` fixes the number of classes."""

    weights: dict[str, tuple[float, ...]]  # model name -> per-class weight (relative; a class's sum > 0)
    thresholds: tuple[float, ...]  # a class is a candidate where its blend is above its threshold
    min_area: tuple[float, ...] | None = None  # drop components below this fraction of the image; 0 = off
    fill_holes: tuple[bool, ...] | None = None  # fill the background holes of each class's mask
    gate_threshold: tuple[float, ...] | None = None  # a class only in images whose presence reaches this; 0 = off

    def __post_init__(self):
        if not isinstance(self.weights, dict) or not self.weights:
            raise ValueError("weights must be an object keyed by model name, with at least one model")
        n = len(self.thresholds)
        if n < 1:
            raise ValueError("thresholds: expected one per class")
        object.__setattr__(self, "thresholds", _per_class(self.thresholds, n))
        object.__setattr__(self, "gate_threshold",
                           _per_class(0.0 if self.gate_threshold is None else self.gate_threshold, n))
        object.__setattr__(self, "min_area", _per_class(0.0 if self.min_area is None else self.min_area, n))
        object.__setattr__(self, "fill_holes", _per_class(False if self.fill_holes is None else self.fill_holes,
                                                          n, bool))
        object.__setattr__(self, "weights", {k: _per_class(v, n) for k, v in self.weights.items()})

    @property
    def n_classes(self) -> int:
        return len(self.thresholds)

    @property
    def gated(self) -> bool:
        """Whether some class needs the classifier's presence (a gate run)."""
        return any(t > 0 for t in self.gate_threshold)

    @classmethod
    def plain_mean(cls, names: list[str], n_classes: int, threshold: float) -> ImageEnsembleParams:
        """Equal weights at one threshold, nothing else: label_map of the mean."""
        return cls({n: (1.0,) * n_classes for n in names}, (threshold,) * n_classes)

    @classmethod
    def alone(cls, names: list[str], name: str, n_classes: int, threshold: float) -> ImageEnsembleParams:
        """The plain mean with every weight but `name`'s zero."""
        return cls({n: (1.0 if n == name else 0.0,) * n_classes for n in names}, (threshold,) * n_classes)

    def weight_matrix(self, names: list[str] | None = None) -> np.ndarray:
        """(M, K) float32 weights of `names` (default all, in order); ValueError when a class has none."""
        matrix = np.array([self.weights[n] for n in (names or self.weights)], dtype=np.float32)
        empty = np.flatnonzero(matrix.sum(axis=0) <= 0)
        if len(empty):
            raise ValueError(f"no model has weight for class {int(empty[0])}")
        return matrix

    def replace_class(self, field: str, c: int, value) -> ImageEnsembleParams:
        """A copy with one class's entry of a per-class field changed."""
        values = list(getattr(self, field))
        values[c] = value
        return dataclasses.replace(self, **{field: tuple(values)})

    def replace_weight(self, name: str, c: int, value: float) -> ImageEnsembleParams:
        row = list(self.weights[name])
        row[c] = value
        return dataclasses.replace(self, weights={**self.weights, name: tuple(row)})

    def with_model(self, name: str) -> ImageEnsembleParams:
        """A copy with `name` weighted 1 in every class."""
        return dataclasses.replace(self, weights={**self.weights, name: (1.0,) * self.n_classes})

    def without_model(self, name: str) -> ImageEnsembleParams:
        """A copy with `name` weighted 0 in every class (weight_matrix says whether the others still blend)."""
        return dataclasses.replace(self, weights={**self.weights, name: (0.0,) * self.n_classes})

    def used_models(self) -> list[str]:
        """The models with weight in some class."""
        return [n for n, row in self.weights.items() if any(w > 0 for w in row)]

    def only(self, names: list[str]) -> ImageEnsembleParams:
        """The same parameters restricted to `names` (the ones left out must have no weight)."""
        unused = sorted(set(self.used_models()) - set(names))
        if unused:
            raise ValueError(f"models {unused} have weight: they cannot be left out")
        return dataclasses.replace(self, weights={n: self.weights[n] for n in names})

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists."""
        return {"weights": {k: list(v) for k, v in self.weights.items()}, "thresholds": list(self.thresholds),
                "gate_threshold": list(self.gate_threshold), "min_area": list(self.min_area),
                "fill_holes": list(self.fill_holes)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "ensemble.json") -> ImageEnsembleParams:
        """The parameters of an ensemble file; a one-line DataError naming `source` on an unknown key, a
        missing one, a value of the wrong type, length or range, or a class no model weighs."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise DataError(f"{source}: unknown ensemble parameter(s) {', '.join(unknown)}")
        try:
            if not isinstance(data.get("weights"), dict) or not isinstance(data.get("thresholds"), list):
                raise ValueError("weights (an object keyed by model name) and thresholds (a list per class) "
                                 "are required")
            n = len(data["thresholds"])
            for name, value in data["weights"].items():
                _check_read(f"weights of {name}", value, *WEIGHT, classes=n)
            for name, (kind, low, high) in FILE_FIELDS.items():
                if name in data:
                    _check_read(name, data[name], kind, low, high, classes=n)
            params = cls(**data)
            params.weight_matrix()
            return params
        except (TypeError, ValueError) as exc:
            raise DataError(f"{source}: bad ensemble parameters ({exc})") from None
