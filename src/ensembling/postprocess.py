"""The ensemble's one code path from probabilities to masks, shared by OOF tuning and submission.

`apply_ensemble(probs_by_model, gate_probs, params, box)` runs, per case-day:
blend (per-class model weights inside the 2.5D and 3D groups, then the 2.5D/3D fusion weight) ->
pixel threshold per class -> gates (classifier presence threshold; the pixel-count rule: a class is
present in a slice when more than N pixels exceed p) -> detector box -> minimum 3D connected
component size -> clean-up along z (drop positive z-runs shorter than k slices, or keep only the
run with the most voxels). Every step only removes voxels, and each is off at its neutral value.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from src.core.errors import DataError
from src.core.ids import CLASSES

GROUPS = ("2d", "3d")  # blend groups: 3D models vs every other segmenter
N_CLASSES = len(CLASSES)
Box = tuple[int, int, int, int]  # (y0, y1, x0, x1)


def group_of(stage: str) -> str:
    """The blend group of a model's training stage."""
    return "3d" if stage == "seg3d" else "2d"


def _per_class(value, kind=float) -> tuple:
    values = tuple(kind(v) for v in (value if isinstance(value, (list, tuple)) else [value] * N_CLASSES))
    if len(values) != N_CLASSES:
        raise ValueError(f"expected {N_CLASSES} per-class values, got {len(values)}")
    return values


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
        if set(self.weights) != set(self.groups):
            raise ValueError("weights and groups must name the same models")
        if not self.weights:
            raise ValueError("an ensemble needs at least one model")
        bad = {g for g in self.groups.values() if g not in GROUPS}
        if bad:
            raise ValueError(f"unknown blend group(s) {sorted(bad)} (expected {', '.join(GROUPS)})")
        object.__setattr__(self, "weights", {k: _per_class(v) for k, v in self.weights.items()})
        for name, kind in (("fusion", float), ("thresholds", float), ("gate_threshold", float), ("gate_pixels", int),
                           ("gate_prob", float), ("min_size", int), ("z_min_run", int), ("z_largest", bool)):
            object.__setattr__(self, name, _per_class(getattr(self, name), kind))

    @classmethod
    def plain_mean(cls, groups: dict[str, str]) -> EnsembleParams:
        """Equal weights, 3D fusion 0.5, threshold 0.5, no gate and no clean-up."""
        return cls(weights={name: (1.0,) * N_CLASSES for name in groups}, groups=dict(groups))

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
            return cls(**data)
        except (TypeError, ValueError) as exc:
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


def _model_names(probs_by_model: dict[str, np.ndarray], params: EnsembleParams) -> list[str]:
    """The ensemble's models, checked to have probabilities of one shape."""
    missing = sorted(set(params.weights) - set(probs_by_model))
    if missing:
        raise DataError(f"no probabilities for ensemble model(s) {', '.join(missing)}")
    names = list(params.weights)
    first = probs_by_model[names[0]].shape
    for name in names:
        if probs_by_model[name].shape != first:
            raise DataError(f"model {name}: probabilities of shape {probs_by_model[name].shape}, expected {first}")
    return names


def blend_class(probs_by_model: dict[str, np.ndarray], params: EnsembleParams, c: int) -> np.ndarray:
    """Class c of the blend: the weighted mean of the models' (Z, H, W) probabilities, summed in float32
    and returned as float16 (the precision of saved predictions), so OOF tuning can keep blends in
    memory and match test time exactly."""
    names = _model_names(probs_by_model, params)
    weights = effective_weights(params, names)[:, c]
    first = probs_by_model[names[0]]
    out = np.zeros(first.shape[:1] + first.shape[2:], dtype=np.float32)
    for name, w in zip(names, weights):
        if w:
            out += np.float32(w) * probs_by_model[name][:, c].astype(np.float32, copy=False)
    return out.astype(np.float16)


def blend(probs_by_model: dict[str, np.ndarray], params: EnsembleParams) -> np.ndarray:
    """Weighted mean of (Z, 3, H, W) probabilities, class by class (blend_class)."""
    return np.stack([blend_class(probs_by_model, params, c) for c in range(N_CLASSES)], axis=1)


def pixel_gate(probs: np.ndarray, pixels, prob) -> np.ndarray:
    """(Z, 3) bool: class present in a slice when more than pixels[c] of its pixels exceed prob[c]."""
    counts = np.stack([np.count_nonzero(probs[:, c] > prob[c], axis=(1, 2)) for c in range(probs.shape[1])], axis=1)
    return counts > np.asarray(pixels)


def classifier_gate(gate_probs: np.ndarray, thresholds) -> np.ndarray:
    """(Z, 3) bool: presence probability at or above the per-class threshold."""
    return np.asarray(gate_probs) >= np.asarray(thresholds)


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """A 3D bool mask without its 26-connected components smaller than min_size voxels."""
    if min_size <= 1 or not mask.any():
        return mask
    return cc3d.dust(np.ascontiguousarray(mask), threshold=min_size, connectivity=26)


def clean_z_runs(mask: np.ndarray, min_run: int = 0, keep_largest: bool = False) -> np.ndarray:
    """Clean a (Z, H, W) mask along z (in place): a z-run is a maximal range of consecutive non-empty
    slices; drop runs shorter than min_run slices, and with keep_largest every run but the one with
    the most voxels."""
    if min_run <= 1 and not keep_largest:
        return mask
    voxels = np.count_nonzero(mask, axis=(1, 2))
    runs, n = ndimage.label(voxels > 0)
    if n == 0:
        return mask
    index = np.arange(1, n + 1)
    keep = np.ones(n, dtype=bool)
    if min_run > 1:
        keep &= ndimage.sum_labels(np.ones_like(voxels), runs, index) >= min_run
    if keep_largest:
        sizes = np.where(keep, ndimage.sum_labels(voxels, runs, index), -1)
        keep = index == index[np.argmax(sizes)]
    mask[~np.isin(runs, index[keep])] = False
    return mask


def crop_to_box(masks: np.ndarray, box: Box) -> np.ndarray:
    """Zero (in place) everything of (..., H, W) masks outside the box (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = (int(v) for v in box)
    inside = np.zeros(masks.shape[-2:], dtype=bool)
    inside[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    masks &= inside
    return masks


def postprocess_class(probs: np.ndarray, gate_probs: np.ndarray | None, params: EnsembleParams, c: int,
                      box: Box | None = None) -> np.ndarray:
    """Class c's blended (Z, H, W) probabilities -> bool mask: threshold, gates, box, components, z-runs.
    `gate_probs` are the classifier's (Z, 3) presence probabilities (or None)."""
    mask = probs > np.float32(params.thresholds[c])
    present = np.ones(mask.shape[0], dtype=bool)
    if params.gate_threshold[c] > 0:
        if gate_probs is None:
            raise DataError("the ensemble gates on a classifier but no classifier probabilities were given")
        if np.shape(gate_probs) != (mask.shape[0], N_CLASSES):
            raise DataError(f"classifier probabilities of shape {np.shape(gate_probs)}, "
                            f"expected {(mask.shape[0], N_CLASSES)}")
        present &= classifier_gate(np.asarray(gate_probs)[:, c], params.gate_threshold[c])
    if params.gate_pixels[c] > 0:
        present &= pixel_gate(probs[:, None], [params.gate_pixels[c]], [params.gate_prob[c]])[:, 0]
    mask &= present[:, None, None]
    if params.crop:
        if box is None:
            raise DataError("the ensemble crops to the detector box but no box was given")
        crop_to_box(mask, box)
    mask = remove_small_components(mask, params.min_size[c])
    return clean_z_runs(mask, params.z_min_run[c], params.z_largest[c])


def postprocess(probs: np.ndarray, gate_probs: np.ndarray | None, params: EnsembleParams,
                box: Box | None = None) -> np.ndarray:
    """Blended (Z, 3, H, W) probabilities -> bool masks, class by class (postprocess_class)."""
    return np.stack([postprocess_class(probs[:, c], gate_probs, params, c, box) for c in range(N_CLASSES)], axis=1)


def apply_ensemble(probs_by_model: dict[str, np.ndarray], gate_probs: np.ndarray | None,
                   params: EnsembleParams, box: Box | None = None) -> np.ndarray:
    """Probabilities of every model for one case-day -> (Z, 3, H, W) bool masks."""
    return postprocess(blend(probs_by_model, params), gate_probs, params, box)
