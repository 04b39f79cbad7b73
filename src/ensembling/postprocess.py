"""The ensemble's one code path from probabilities to masks, shared by OOF tuning and submission.

`apply_ensemble(probs_by_model, gate_probs, params, box)` runs, per case-day:
blend (per-class model weights inside the 2.5D and 3D groups, then the 2.5D/3D fusion weight) ->
pixel threshold per class -> gates (classifier presence threshold; the pixel-count rule: a class is
present in a slice when more than N pixels exceed p) -> detector box -> minimum 3D connected
component size -> clean-up along z (drop positive z-runs shorter than k slices, or keep only the
run with the most voxels). Every step only removes voxels, and each is off at its neutral value.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from src.core.errors import DataError
from src.data.half import above, add_scaled
from src.ensembling.components import remove_small_components
from src.ensembling.params import N_CLASSES, EnsembleParams, effective_weights
from src.inference.gating import classifier_gate, pixel_gate

if TYPE_CHECKING:  # torch stays out of the tuner's worker processes (src.data.geometry imports it)
    from src.data.geometry import Box


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
    """Class c of the blend: the weighted mean of the models' (Z, H, W) probabilities, summed in
    float32 (float16 inputs read through their bits, src.data.half); a model with all the weight is
    its own probabilities (a view, float16 or float32: thresholds compare them exactly as float32).
    OOF tuning and the submission threshold the same values, so their masks agree to the voxel."""
    names = _model_names(probs_by_model, params)
    weights = effective_weights(params, names)[:, c]
    used = [(name, w) for name, w in zip(names, weights) if w]
    if len(used) == 1 and used[0][1] == 1.0:
        return probs_by_model[used[0][0]][:, c]  # one model alone: its own values, in their own dtype
    first = probs_by_model[names[0]]
    out = np.zeros(first.shape[:1] + first.shape[2:], dtype=np.float32)
    for name, w in used:
        add_scaled(out, probs_by_model[name][:, c], w)
    return out


def blend(probs_by_model: dict[str, np.ndarray], params: EnsembleParams) -> np.ndarray:
    """Weighted mean of (Z, 3, H, W) probabilities, class by class (blend_class)."""
    return np.stack([blend_class(probs_by_model, params, c) for c in range(N_CLASSES)], axis=1)


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
    mask = above(probs, params.thresholds[c])
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
    if not present.all():
        mask[~present] = False
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
