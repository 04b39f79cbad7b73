"""The competition metric: 0.4 x Dice (per slice and class) + 0.6 x (1 - 3D Hausdorff per case-day).

`hausdorff_3d` is exact (equal to `hausdorff_naive`, scipy's `directed_hausdorff` over every voxel,
within float rounding) and fast: for the directed distance d(A -> B) only voxels of A outside B
matter, and the nearest voxel of B to a point outside B is always a boundary voxel of B (the step
from it towards the point along any axis where they differ leaves B), so a KD-tree over B's
6-connected boundary answers every query in float64. That costs in proportion to the points of A
outside B: fine for a good prediction, minutes for an untrained model's that covers half the
volume. Then a distance transform of not-B (the `edt` package, float32, linear in the box's
voxels) finds the few voxels of A within float32 rounding of the farthest, and their distances are
recomputed exactly in float64 over the voxels of B in a window around each.

Empty sets: a Dice row with both masks empty is skipped (NaN), so is a case-day whose two volumes are
empty; one empty volume gives Hausdorff 1.0. When nothing at all is left to average, the Dice term
counts as 1.0 and the Hausdorff as 0.0 (an empty prediction of an empty truth is perfect), so the
score is always defined and equals 0.4 x dice + 0.6 x (1 - hausdorff) of the reported fields.

Protocols: "kaggle" is the definition above. "mlebench" adds what mle-bench's grader for this
competition (mlebench/competitions/uw-madison-gi-tract-image-segmentation/grade.py) does on top:
Hausdorff 1.0 for a case-day whose prediction has over 10x the truth's voxels (counted on the
class-OR volume). Its column-major RLE decoding lives in `src.score`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import edt
import numba
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.spatial.distance import directed_hausdorff

PROTOCOLS = ("kaggle", "mlebench")
DICE_WEIGHT = 0.4
HAUSDORFF_WEIGHT = 0.6
MLEBENCH_OVERSIZE = 10  # mle-bench: prediction voxels > 10 x truth voxels -> Hausdorff 1.0
# The KD-tree path while the voxels of A outside B (its queries) are under 1/TRANSFORM_SHARE of the
# box's voxels and B's boundary (its tree) under a quarter, else the distance transform.
TRANSFORM_SHARE = 20


@dataclass(frozen=True, eq=False)
class CaseDayScore:
    """Dice per (slice, class) row, NaN where both are empty, and the case-day's 3D Hausdorff."""

    dice: np.ndarray  # (Z, 3) float64
    hausdorff: float


@dataclass(frozen=True, eq=False)
class MetricResult:
    """The score and its two terms (after the empty-set convention) plus one row per case-day."""

    score: float
    dice: float
    hausdorff: float
    per_case_day: pd.DataFrame  # case_day, dice, hausdorff, n_rows_scored


def _pair(pred: np.ndarray, truth: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != ndim:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} must be equal {ndim}-D shapes")
    return pred, truth


def dice_rows(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """2|P & T| / (|P| + |T|) per slice and class of (Z, 3, H, W) volumes; NaN where both are empty."""
    pred, truth = _pair(pred, truth, 4)
    inter, total = _overlap_counts(pred, truth)
    out = np.full(total.shape, np.nan)
    np.divide(2.0 * inter, total, out=out, where=total > 0)
    return out


@numba.njit(cache=True, nogil=True)
def _overlap_counts(pred, truth):
    """|P & T| and |P| + |T| per (slice, class) of (Z, C, H, W) bool volumes, in one pass."""
    z, c, h, w = pred.shape
    inter = np.zeros((z, c), dtype=np.int64)
    total = np.zeros((z, c), dtype=np.int64)
    for i in range(z):
        for k in range(c):
            both = 0
            either = 0
            for j in range(h):
                for m in range(w):
                    p, t = pred[i, k, j, m], truth[i, k, j, m]
                    both += p & t
                    either += np.int64(p) + np.int64(t)
            inter[i, k], total[i, k] = both, either
    return inter, total


def _empty_rule(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """NaN if both are empty, 1.0 if one is, None if both have voxels."""
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return math.nan
    if not has_pred or not has_truth:
        return 1.0
    return None


def hausdorff_naive(pred: np.ndarray, truth: np.ndarray) -> float:
    """The reference: scipy's directed_hausdorff both ways over all voxel coordinates / shape, / sqrt(3)."""
    pred, truth = _pair(pred, truth, 3)
    rule = _empty_rule(pred, truth)
    if rule is not None:
        return rule
    p = np.argwhere(pred) / pred.shape
    t = np.argwhere(truth) / truth.shape
    return max(directed_hausdorff(p, t)[0], directed_hausdorff(t, p)[0]) / math.sqrt(3)


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a non-empty 3D mask, narrowing one axis at a time to touch less memory."""
    box = [slice(None)] * 3
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask[tuple(box)].any(axis=other))
        start = box[axis].start or 0
        box[axis] = slice(start + int(hits[0]), start + int(hits[-1]) + 1)
    return tuple(box)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of a 3D mask with a 6-neighbour outside it, the image edge counting as inside.

    The same set as `mask & ~ndimage.binary_erosion(mask, 6-connectivity, border_value=1)`, which the
    tests check, in shifted boolean ANDs that run about 8x faster on case-day volumes.
    """
    inner = mask.copy()
    for axis in range(mask.ndim):
        head = tuple(slice(None, -1) if a == axis else slice(None) for a in range(mask.ndim))
        tail = tuple(slice(1, None) if a == axis else slice(None) for a in range(mask.ndim))
        inner[head] &= mask[tail]
        inner[tail] &= mask[head]
    return mask & ~inner


def _farthest(tree: cKDTree, points: np.ndarray) -> float:
    """max over points of the distance to the nearest tree point.

    A subsample's maximum bounds the search: queries whose nearest point lies within it stop early
    (and return inf otherwise); only those are queried again without a bound.
    """
    bound = tree.query(points[::64])[0].max()
    distances, _ = tree.query(points, distance_upper_bound=bound)
    beyond = points[np.isinf(distances)]
    return float(max(bound, tree.query(beyond)[0].max())) if beyond.size else float(bound)


def _farthest_by_transform(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    """max over voxels of a of the distance to the nearest voxel of b (coordinates / scale), by
    the distance transform of ~b, refined exactly for the voxels within its float32 rounding."""
    dist = edt.edt(~b, anisotropy=tuple(1.0 / scale), black_border=False, parallel=1)
    top = float(dist[a].max())
    candidates = np.argwhere(a & (dist >= top * (1 - 1e-5)))
    half = np.ceil(top * (1 + 1e-5) * scale).astype(int) + 1  # the nearest voxel of b is inside
    best = 0.0
    for point in candidates:
        lo, hi = np.maximum(point - half, 0), np.minimum(point + half + 1, b.shape)
        near = np.argwhere(b[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]) + lo
        best = max(best, float(np.sqrt((((near - point) / scale) ** 2).sum(axis=1)).min()))
    return best


def _use_transform(n_outside: int, n_edge: int, n_box: int) -> bool:
    """Whether the KD-tree (n_edge points, n_outside queries) would cost more than a transform."""
    return n_outside > n_box // TRANSFORM_SHARE or n_edge > n_box // 4


def _directed(a: np.ndarray, b: np.ndarray, offset: np.ndarray, shape: tuple[int, ...],
              b_tree: Callable[[], cKDTree] | None = None) -> float:
    """max over voxels of a of the distance to the nearest voxel of b, coordinates divided by shape;
    `b_tree` gives a KD-tree of b's boundary built elsewhere (else it is built here on the crop)."""
    outside = a & ~b
    n_outside = np.count_nonzero(outside)
    if not n_outside:
        return 0.0
    edge = _boundary(b)
    if _use_transform(n_outside, int(np.count_nonzero(edge)), a.size):
        return _farthest_by_transform(outside, b, np.asarray(shape, dtype=np.float64))
    tree = b_tree() if b_tree else cKDTree((np.argwhere(edge) + offset) / shape, balanced_tree=False)
    return _farthest(tree, (np.argwhere(outside) + offset) / shape)


def directed_distance(a: np.ndarray, b: np.ndarray, shape: tuple[float, float, float]) -> float:
    """max over voxels of the 3D mask a of the distance to the nearest voxel of b (non-empty),
    coordinates divided by `shape`; 0 for an empty a."""
    if not a.any():
        return 0.0
    box = _bbox(a | b)
    return _directed(a[box], b[box], np.array([s.start for s in box]), tuple(shape))


def hausdorff_3d(pred: np.ndarray, truth: np.ndarray, shape: tuple[int, int, int] | None = None,
                 origin: tuple[int, int, int] = (0, 0, 0)) -> float:
    """Exact symmetric Hausdorff of two (Z, H, W) masks, coordinates / shape, / sqrt(3); empty rules above.
    When the masks are a crop holding all the voxels of a whole volume, `shape` is the whole's and
    `origin` the crop's first voxel in it: the result is then the whole's, to the bit."""
    pred, truth = _pair(pred, truth, 3)
    rule = _empty_rule(pred, truth)
    if rule is not None:
        return rule
    shape = pred.shape if shape is None else tuple(shape)
    box = _bbox(pred | truth)  # a nearest boundary voxel lies inside the box of both (see module doc)
    offset = np.array([s.start for s in box]) + np.asarray(origin)
    p, t = pred[box], truth[box]
    return max(_directed(p, t, offset, shape), _directed(t, p, offset, shape)) / math.sqrt(3)


class HausdorffToTruth:
    """`hausdorff_3d(pred, truth, shape, origin)` of many predictions against one truth, to the bit:
    the truth's boundary KD-tree (the prediction -> truth direction) is built once, on the whole
    volume, instead of once per prediction on the pair's box. Every nearest boundary voxel of the
    box is a boundary voxel of the whole (see the module doc), so the distances are the same ones."""

    def __init__(self, truth: np.ndarray, shape: tuple | None = None, origin: tuple[int, int, int] = (0, 0, 0)):
        self.truth = np.asarray(truth, dtype=bool)
        self.shape = self.truth.shape if shape is None else tuple(shape)
        self.origin = np.asarray(origin)
        self._tree: cKDTree | None = None

    def __call__(self, pred: np.ndarray) -> float:
        pred, truth = _pair(pred, self.truth, 3)
        rule = _empty_rule(pred, truth)
        if rule is not None:
            return rule
        box = _bbox(pred | truth)
        offset = np.array([s.start for s in box]) + self.origin
        p, t = pred[box], truth[box]
        return max(_directed(p, t, offset, self.shape, self._truth_tree),
                   _directed(t, p, offset, self.shape)) / math.sqrt(3)

    def _truth_tree(self) -> cKDTree:
        if self._tree is None:
            self._tree = cKDTree((np.argwhere(_boundary(self.truth)) + self.origin) / self.shape, balanced_tree=False)
        return self._tree


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")


def score_case_day(pred: np.ndarray, truth: np.ndarray, protocol: str = "kaggle") -> CaseDayScore:
    """Score one case-day of (Z, 3, H, W) masks: Dice rows and the Hausdorff of the class-OR volumes."""
    check_protocol(protocol)
    pred, truth = _pair(pred, truth, 4)
    pred3, truth3 = pred.any(axis=1), truth.any(axis=1)
    oversize = np.count_nonzero(pred3) > MLEBENCH_OVERSIZE * np.count_nonzero(truth3)
    hausdorff = 1.0 if protocol == "mlebench" and oversize else hausdorff_3d(pred3, truth3)
    return CaseDayScore(dice_rows(pred, truth), hausdorff)


def _nanmean(values: np.ndarray, if_empty: float) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else if_empty


def aggregate(items: Iterable[tuple[str, CaseDayScore]]) -> MetricResult:
    """Combine per-case-day scores: Dice is the nanmean over ALL rows of all case-days, Hausdorff the
    nanmean over case-days; an all-NaN term counts as Dice 1.0 / Hausdorff 0.0."""
    rows, dice_all = [], []
    for case_day, result in items:
        dice_all.append(result.dice.ravel())
        rows.append((case_day, _nanmean(result.dice, math.nan), result.hausdorff,
                     int(np.count_nonzero(~np.isnan(result.dice)))))
    if not rows:
        raise ValueError("no case-days to score")
    table = pd.DataFrame(rows, columns=["case_day", "dice", "hausdorff", "n_rows_scored"])
    dice = _nanmean(np.concatenate(dice_all), 1.0)
    hausdorff = _nanmean(table["hausdorff"].to_numpy(), 0.0)
    score = DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)
    return MetricResult(score, dice, hausdorff, table)


def score_volumes(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]], protocol: str = "kaggle") -> MetricResult:
    """Score (case_day, pred, truth) volumes (see aggregate)."""
    check_protocol(protocol)
    return aggregate((case_day, score_case_day(pred, truth, protocol)) for case_day, pred, truth in pairs)
