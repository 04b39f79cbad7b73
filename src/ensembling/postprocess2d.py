"""The 2D ensemble's masks: `index_map` turns the members' (K, H, W) probabilities into an (H, W) uint8
index map with ImageEnsembleParams, the one path for the tuner (src.ensembling.search2d, on the full
images and on its proxies) and the submission (src.ensembling.submission2d):

1. blend: per class k, sum_m w[m, k] x p_m[k] / sum_m w[m, k] in float32, summed in member order as
   src.inference.tta.merge sums, so equal weights give exactly the runs' mean;
2. threshold: class k is a candidate where its blend is above thresholds[k], and only in an image whose
   presence (the gate run's (K,) probabilities) reaches gate_threshold[k] when that is above 0;
3. among the candidates the most probable class (the first of ties), else background (0);
4. per class, its 8-connected components of fewer than min_area[k] x H x W pixels become background;
5. per class with fill_holes, the background pixels its mask encloses (binary_fill_holes: holes not
   4-connected to the image's edge through the non-mask pixels) join it; another class's pixels are kept.

The plain mean's parameters (equal weights, one threshold, steps 4-5 off) give exactly
label_map(mean, threshold), the validation's and `submit --runs`'s rule.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from src.ensembling.params2d import ImageEnsembleParams

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connected components


def blend(probs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """(K, H, W) float32 weighted mean per class of the (K, H, W) arrays `probs` with (M, K) `weights`
    (a model weighted 0 in every class is not read)."""
    total = None
    for p, w in zip(probs, weights):
        if not w.any():
            continue
        term = np.asarray(p, dtype=np.float32) * w[:, None, None]
        if total is None:
            total = term
        else:
            total += term
    return total / weights.sum(axis=0)[:, None, None]


def labels(blended: np.ndarray, params: ImageEnsembleParams, scale: float = 1.0,
           presence: np.ndarray | None = None) -> np.ndarray:
    """Steps 2-5 on a (K, H, W) blend of probabilities in [0, scale] (255: the tuner's uint8 proxies) and
    the image's (K,) presence probabilities (needed when params gate)."""
    kept = gate(params, presence)
    above = [(blended[k] > t * scale) & kept[k] for k, t in enumerate(params.thresholds)]  # in the blend's dtype
    if len(above) == 1:
        out = above[0].astype(np.uint8)
    else:
        candidates = np.where(np.stack(above), blended, -np.inf)
        out = np.where(np.logical_or.reduce(above), candidates.argmax(axis=0) + 1, 0).astype(np.uint8)
    area = out.shape[0] * out.shape[1]
    for k, fraction in enumerate(params.min_area):
        if fraction > 0:
            components, count = ndimage.label(out == k + 1, EIGHT)
            small = np.bincount(components.ravel(), minlength=count + 1) < fraction * area
            small[0] = False
            out[small[components]] = 0
    for k, fill in enumerate(params.fill_holes):
        if fill:
            out[fill_holes(out == k + 1) & (out == 0)] = k + 1
    return out


def gate(params: ImageEnsembleParams, presence: np.ndarray | None) -> list[bool]:
    """Per class, whether the image may hold it: its presence reaches its gate threshold (0: always)."""
    if presence is None:
        if params.gated:
            raise ValueError("the parameters gate on a classifier's presence, and none was given")
        return [True] * params.n_classes
    return [t <= 0 or bool(p >= t) for p, t in zip(np.asarray(presence, dtype=np.float32), params.gate_threshold)]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """scipy.ndimage.binary_fill_holes(mask), 2D, by one labelling of the background (about 3x faster):
    the background components (4-connected) that touch no edge of the image are holes."""
    background, count = ndimage.label(~mask)
    outside = np.zeros(count + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = False  # the mask itself
    return ~outside[background]


def index_map(probs: dict[str, np.ndarray], params: ImageEnsembleParams, scale: float = 1.0,
              presence: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 index map of the members' (K, H, W) probabilities (name -> array, every model of
    params.weights) and the gate run's (K,) `presence` under `params` (steps 1-5 of the module doc)."""
    return index_maps(probs, [params], scale, presence)[0]


def index_maps(probs: dict[str, np.ndarray], param_sets: list[ImageEnsembleParams], scale: float = 1.0,
               presence: np.ndarray | None = None) -> list[np.ndarray]:
    """index_map of each parameter set on one image; sets with the same models and weights share one blend
    (step 1), as the tuner's in-sample, held-out and ablated sets mostly do."""
    blends, out = [], []  # blends: (model names, weight matrix, their blend)
    for params in param_sets:
        names = list(params.weights)
        weights = params.weight_matrix(names)
        blended = next((b for n, w, b in blends if n == names and np.array_equal(w, weights)), None)
        if blended is None:
            blended = blend([probs[n] for n in names], weights)
            blends.append((names, weights, blended))
        out.append(labels(blended, params, scale, presence))
    return out
