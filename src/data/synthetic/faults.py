"""Label faults for robustness work: the ambiguous tail of every train case-day, spoilt case-days."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def cut_tail(masks: np.ndarray, n: int) -> np.ndarray:
    """Drop every label of the last `n` labelled slices of a (Z, 3, H, W) volume (the ambiguous tail)."""
    labelled = np.flatnonzero(masks.any(axis=(1, 2, 3)))
    out = masks.copy()
    if n and labelled.size:
        out[max(labelled[-1] - n + 1, 0):labelled[-1] + 1] = False
    return out


def spoil(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Badly wrong labels: shifted in z and in-plane, the two bowels swapped, stomach dropped on half its slices."""
    z, _, h, w = masks.shape
    sign = rng.choice([-1, 1], 3)
    shift = (int(sign[0] * max(2, z // 24)), 0, int(sign[1] * max(3, h // 12)), int(sign[2] * max(3, w // 12)))
    out = ndimage.shift(masks.view(np.uint8), shift, order=0, mode="constant", cval=0).astype(bool)
    out = out[:, [1, 0, 2]]
    out[rng.random(z) < 0.5, 2] = False
    out[[0, -1]] = False
    return out
