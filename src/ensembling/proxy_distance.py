"""The 3D Hausdorff of a proxy case-day, fast, for ranking candidates (never for a reported score).

The search scores thousands of candidates per case-day, and the truth never changes between them, so
`ProxyDistance` keeps what depends on the truth alone: the distance transform of the truth's
complement on the proxy grid (float16, in the full volume's normalised coordinates), which answers
the prediction -> truth direction with one masked maximum. The truth -> prediction direction looks
for the nearest predicted voxel of each missed truth voxel along a table of grid offsets sorted by
distance (most are a cell or two away); the few farther than the table reaches are answered by the
exact KD-tree path of src.metrics.competition. Distances are those of the grid (exact on it, up to
the transform's float16 rounding), which is what a proxy estimates anyway.
"""
from __future__ import annotations

import math
from functools import lru_cache

import edt
import numba
import numpy as np

from src.data.half import HALF_TO_FLOAT
from src.metrics.competition import directed_distance

TABLE_REACH = 0.12  # offsets up to this normalised distance (the score's Hausdorff term is x sqrt(3) below)


@lru_cache(maxsize=16)
def offset_table(scale: tuple[float, float, float], reach: float = TABLE_REACH) -> tuple[np.ndarray, np.ndarray]:
    """Grid offsets (K, 3) int32 with their normalised lengths (K,), nearest first, up to `reach`;
    `scale` is the grid's size along each axis in normalised units (a step is 1 / scale)."""
    steps = [int(math.ceil(reach * s)) for s in scale]
    axes = np.meshgrid(*[np.arange(-n, n + 1) for n in steps], indexing="ij")
    offsets = np.stack([a.ravel() for a in axes], axis=1)
    lengths = np.sqrt((((offsets / np.asarray(scale)) ** 2).sum(axis=1)))
    keep = (lengths <= reach) & (lengths > 0)
    order = np.argsort(lengths[keep], kind="stable")
    return offsets[keep][order].astype(np.int32), lengths[keep][order]


@numba.njit(cache=True, nogil=True)
def _nearest_by_table(queries, target, offsets, lengths):
    """For each voxel of `queries` (3D bool), the length of the first offset that lands on `target`;
    returns the largest of them and the voxels that no offset of the table reaches (an (n, 3) array)."""
    z, h, w = queries.shape
    farthest = 0.0
    missed = []
    for i in range(z):
        for j in range(h):
            for k in range(w):
                if not queries[i, j, k]:
                    continue
                found = False
                for m in range(offsets.shape[0]):
                    a, b, c = i + offsets[m, 0], j + offsets[m, 1], k + offsets[m, 2]
                    if 0 <= a < z and 0 <= b < h and 0 <= c < w and target[a, b, c]:
                        if lengths[m] > farthest:
                            farthest = lengths[m]
                        found = True
                        break
                if not found:
                    missed.append((i, j, k))
    out = np.empty((len(missed), 3), dtype=np.int64)
    for n in range(len(missed)):
        out[n, 0], out[n, 1], out[n, 2] = missed[n]
    return farthest, out


@numba.njit(cache=True, nogil=True)
def _masked_max_bits(values, mask):
    """The largest float16 bit pattern of `values` where `mask` is set (values >= 0: bits order as values)."""
    best = 0
    for i in range(values.size):
        if mask[i] and values[i] > best:
            best = values[i]
    return best


class ProxyDistance:
    """The Hausdorff term of one proxy case-day against its fixed truth (the class-OR volume on the grid).

    `scale` is the full volume's size in grid steps along (z, y, x): (Z, H / stride, W / stride)."""

    def __init__(self, truth: np.ndarray, scale: tuple[float, float, float]):
        self.truth = np.ascontiguousarray(truth, dtype=bool)
        self.scale = tuple(float(s) for s in scale)
        self.has_truth = bool(self.truth.any())
        self._to_truth = None
        if self.has_truth:
            spacing = tuple(1.0 / s for s in self.scale)
            dist = edt.edt(~self.truth, anisotropy=spacing, black_border=False, parallel=1)
            self._to_truth = dist.astype(np.float16).view(np.uint16)

    @property
    def nbytes(self) -> int:
        return self.truth.nbytes + (0 if self._to_truth is None else self._to_truth.nbytes)

    def hausdorff(self, pred: np.ndarray) -> float:
        """Symmetric Hausdorff / sqrt(3) of the (z, y, x) bool prediction against the truth; NaN when
        both are empty, 1.0 when one is."""
        has_pred = bool(pred.any())
        if not has_pred or not self.has_truth:
            return math.nan if not has_pred and not self.has_truth else 1.0
        to_truth = float(HALF_TO_FLOAT[_masked_max_bits(self._to_truth.reshape(-1), pred.reshape(-1))])
        offsets, lengths = offset_table(self.scale)
        missed_truth = self.truth & ~pred
        to_pred, missed = _nearest_by_table(missed_truth, pred, offsets, lengths)
        if len(missed):
            beyond = np.zeros_like(pred)
            beyond[tuple(missed.T)] = True
            to_pred = max(to_pred, directed_distance(beyond, pred, self.scale))
        return max(to_truth, to_pred) / math.sqrt(3)
