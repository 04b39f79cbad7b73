"""The minimum-size filter of 3D connected components (26-connectivity), in one numba pass.

The same result as cc3d.dust (components with fewer than `min_size` voxels removed; the tests check
it), 3-4x faster on the sparse masks the ensemble filters: union-find over the foreground voxels
only, each joined to its 13 already visited neighbours, then one pass for the sizes and one to clear.
The tuner runs it for every candidate of every case-day once a class has a minimum size.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _root(parent, i):
    """The root of i's tree, compressing the path on the way."""
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:
        parent[i], i = root, parent[i]
    return root


@numba.njit(cache=True, nogil=True)
def _dust(mask, min_size):
    z, h, w = mask.shape
    label = np.full((z, h, w), -1, dtype=np.int32)
    parent = [np.int32(0) for _ in range(0)]
    for i in range(z):
        for j in range(h):
            for k in range(w):
                if not mask[i, j, k]:
                    continue
                root = -1
                for di in range(-1, 1):
                    for dj in range(-1, 2):
                        for dk in range(-1, 2):
                            if di == 0 and (dj > 0 or (dj == 0 and dk >= 0)):
                                continue  # not visited yet
                            a, b, c = i + di, j + dj, k + dk
                            if a < 0 or b < 0 or c < 0 or b >= h or c >= w or label[a, b, c] < 0:
                                continue
                            other = _root(parent, label[a, b, c])
                            if root < 0:
                                root = other
                            elif other < root:
                                parent[root] = other
                                root = other
                            elif other > root:
                                parent[other] = root
                if root < 0:
                    root = len(parent)
                    parent.append(np.int32(root))
                label[i, j, k] = root
    size = np.zeros(len(parent), dtype=np.int64)
    for i in range(z):
        for j in range(h):
            for k in range(w):
                if label[i, j, k] >= 0:
                    label[i, j, k] = _root(parent, label[i, j, k])
                    size[label[i, j, k]] += 1
    for i in range(z):
        for j in range(h):
            for k in range(w):
                if label[i, j, k] >= 0 and size[label[i, j, k]] < min_size:
                    mask[i, j, k] = False


def remove_small_components(mask: np.ndarray, min_size: int) -> np.ndarray:
    """A 3D bool mask without its 26-connected components smaller than min_size voxels (a copy when
    anything is removed; the mask itself when min_size <= 1 or it is empty)."""
    if min_size <= 1 or not mask.any():
        return mask
    out = np.array(mask, dtype=bool, order="C")
    _dust(out, int(min_size))
    return out
