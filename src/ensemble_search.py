"""Fast evaluation of ensemble parameters on out-of-fold predictions, and the coordinate-descent search.

Memory and speed: every case-day is cut once to its region of interest, the bounding box of the
voxels where some model's probability exceeds the lowest threshold any candidate can use (or the
truth is set). No candidate can mark a voxel outside it (a blend never exceeds its largest input,
and every post-processing step only removes), so scoring the region pasted back into the full
volume is exact. The blended probabilities of the current weights are kept per case-day, so
threshold, gate and clean-up candidates only re-run post-processing and the metric.

Search: coordinate descent over small candidate grids, in this order: per-model per-class weights,
per-class 2.5D/3D fusion, per-class thresholds, per-class gate (classifier threshold, or the
pixel-count rule), per-class minimum component size, per-class z clean-up, detector crop on/off.
Each coordinate tries all its values with the others fixed and keeps a value only if it raises
the score; passes repeat until one changes nothing (or `passes` is reached). The start is the
plain mean (so the result is never below it on the tuning data).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from src.metric import MetricResult, score_volumes
from src.postprocess import N_CLASSES, EnsembleParams, blend, postprocess

WEIGHTS = (0.0, 0.5, 1.0, 2.0)  # per model and class, relative inside its group
FUSION = (0.0, 0.2, 0.35, 0.5, 0.65, 0.8, 1.0)  # share of the 3D group
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
GATE_THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # classifier presence; 0 = off
GATE_PROBS = (0.5, 0.6, 0.7)  # pixel rule: probability a pixel must exceed
GATE_AREA = (1e-4, 3e-4, 1e-3, 3e-3)  # pixel rule: counts, as fractions of the median slice area
SIZE_AREA = (5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2)  # min 3D component size, fractions of the slice area
Z_RULES = ((0, False), (2, False), (3, False), (0, True))  # (z_min_run, z_largest)
ROI_THRESHOLD = min(THRESHOLDS + GATE_PROBS)  # no candidate marks a voxel at or below this


@dataclass(frozen=True, eq=False)
class OOFCase:
    """One case-day cut to its region of interest: model probabilities, gate, box and truth."""

    case_day: str
    fold: int
    shape: tuple[int, int, int, int]  # full (Z, 3, H, W)
    roi: tuple[slice, slice, slice]  # z, y, x
    probs: dict[str, np.ndarray]  # name -> float16 (z, 3, y, x)
    truth: np.ndarray  # bool (z, 3, y, x)
    gate: np.ndarray | None = None  # (z, 3) presence probabilities
    box: tuple[int, int, int, int] | None = None  # detector box relative to the region

    def full(self, masks: np.ndarray) -> np.ndarray:
        """Region masks pasted into an empty full-size volume."""
        out = np.zeros(self.shape, dtype=bool)
        z, y, x = self.roi
        out[z, :, y, x] = masks
        return out


def region_of_interest(probs: Iterable[np.ndarray], truth: np.ndarray, threshold: float = ROI_THRESHOLD
                       ) -> tuple[slice, slice, slice]:
    """Bounding box (z, y, x) of the voxels above `threshold` in any of `probs`, or in the truth."""
    active = truth.any(axis=1)
    for p in probs:
        active |= (p > threshold).any(axis=1)
    if not active.any():
        return slice(0, 0), slice(0, 0), slice(0, 0)
    box = []
    for axis in range(3):
        hits = np.flatnonzero(active.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def make_case(case_day: str, fold: int, probs: dict[str, np.ndarray], truth: np.ndarray,
              gate: np.ndarray | None = None, box=None) -> OOFCase:
    """Cut full-size arrays of one case-day to its region of interest."""
    z, y, x = roi = region_of_interest(probs.values(), truth)
    cut = lambda a: np.ascontiguousarray(a[z, :, y, x])  # noqa: E731
    local_box = None
    if box is not None:
        y0, y1, x0, x1 = (int(v) for v in box)
        local_box = (y0 - (y.start or 0), y1 - (y.start or 0), x0 - (x.start or 0), x1 - (x.start or 0))
    return OOFCase(case_day, fold, tuple(truth.shape), roi, {k: cut(v).astype(np.float16) for k, v in probs.items()},
                   cut(truth).astype(bool), None if gate is None else np.asarray(gate)[z], local_box)


class Evaluator:
    """Scores ensemble parameters on OOF cases with the competition metric; keeps the last blend."""

    def __init__(self, cases: list[OOFCase]):
        self.cases = cases
        self.evaluations = 0
        self._blend_key = None
        self._blends: dict[str, np.ndarray] = {}

    def _blended(self, case: OOFCase, params: EnsembleParams) -> np.ndarray:
        key = (tuple(sorted(params.weights.items())), tuple(sorted(params.groups.items())), params.fusion)
        if key != self._blend_key:
            self._blend_key, self._blends = key, {}
        if case.case_day not in self._blends:
            self._blends[case.case_day] = blend(case.probs, params)
        return self._blends[case.case_day]

    def masks(self, case: OOFCase, params: EnsembleParams) -> np.ndarray:
        """Full-size (Z, 3, H, W) masks of a case under `params` (apply_ensemble on the region)."""
        return case.full(postprocess(self._blended(case, params), case.gate, params, case.box))

    def score(self, params: EnsembleParams | Callable[[OOFCase], EnsembleParams],
              cases: list[OOFCase] | None = None) -> MetricResult:
        """The metric over `cases` (default all); `params` may be a function of the case."""
        self.evaluations += 1
        chosen = self.cases if cases is None else cases
        pick = params if callable(params) else (lambda case: params)
        return score_volumes((c.case_day, self.masks(c, pick(c)), c.full(c.truth)) for c in chosen)


@dataclass(frozen=True)
class SearchSpace:
    """What the search may change: weights inside groups with several models, fusion when both groups
    exist, the classifier gate when its probabilities exist (else the pixel rule), the crop when boxes
    exist; pixel counts and component sizes scale with the median slice area of the data."""

    groups: dict[str, str]
    slice_area: float
    classifier: bool = False
    crop: bool = False

    @classmethod
    def for_cases(cls, cases: list[OOFCase], groups: dict[str, str]) -> SearchSpace:
        area = float(np.median([c.shape[2] * c.shape[3] for c in cases]))
        return cls(dict(groups), area, classifier=all(c.gate is not None for c in cases),
                   crop=all(c.box is not None for c in cases))

    def _counts(self, fractions) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(f * self.slice_area)) for f in fractions}))

    def coordinates(self) -> list[tuple[str, Callable[[EnsembleParams], list[EnsembleParams]]]]:
        """(label, params -> candidate params) in search order."""
        coords = []
        for name, group in self.groups.items():
            if sum(g == group for g in self.groups.values()) > 1:
                for c in range(N_CLASSES):
                    coords.append((f"weight {name} c{c}", _weight_candidates(name, c)))
        per_class = []
        if set(self.groups.values()) == {"2d", "3d"}:
            per_class.append(("fusion", lambda p, c: [p.replace_class("fusion", c, v) for v in FUSION]))
        per_class.append(("threshold", lambda p, c: [p.replace_class("thresholds", c, v) for v in THRESHOLDS]))
        if self.classifier:
            per_class.append(("gate", lambda p, c: [p.replace_class("gate_threshold", c, v) for v in GATE_THRESHOLDS]))
        else:
            counts = (0,) + self._counts(GATE_AREA)
            per_class.append(("gate", lambda p, c: [p.replace_class("gate_pixels", c, n).replace_class("gate_prob", c, q)
                                                    for n in counts for q in (GATE_PROBS if n else (0.5,))]))
        sizes = (0,) + self._counts(SIZE_AREA)
        per_class.append(("min size", lambda p, c: [p.replace_class("min_size", c, n) for n in sizes]))
        per_class.append(("z clean-up", lambda p, c: [p.replace_class("z_min_run", c, k).replace_class("z_largest", c, big)
                                                     for k, big in Z_RULES]))
        for label, make in per_class:
            for c in range(N_CLASSES):
                coords.append((f"{label} c{c}", lambda p, make=make, c=c: make(p, c)))
        if self.crop:
            coords.append(("crop", lambda p: [dataclasses.replace(p, crop=v) for v in (False, True)]))
        return coords


def _weight_candidates(name: str, c: int) -> Callable[[EnsembleParams], list[EnsembleParams]]:
    def candidates(p: EnsembleParams) -> list[EnsembleParams]:
        group = p.groups[name]
        others = sum(w[c] for n, w in p.weights.items() if n != name and p.groups[n] == group)
        return [p.replace_weight(name, c, v) for v in WEIGHTS if v > 0 or others > 0]
    return candidates


@dataclass(frozen=True)
class SearchResult:
    params: EnsembleParams
    result: MetricResult
    evaluations: int
    passes: int


def coordinate_descent(evaluator: Evaluator, space: SearchSpace, cases: list[OOFCase] | None = None,
                       start: EnsembleParams | None = None, passes: int = 2,
                       log: Callable[[str], None] | None = None) -> SearchResult:
    """Greedy coordinate descent from `start` (default the plain mean) on `cases` (default all)."""
    best = start or EnsembleParams.plain_mean(space.groups)
    best_result = evaluator.score(best, cases)
    evaluations, done = 1, 0
    for done in range(1, passes + 1):
        improved = False
        for _, candidates in space.coordinates():
            for candidate in candidates(best):
                if candidate == best:
                    continue
                result = evaluator.score(candidate, cases)
                evaluations += 1
                if result.score > best_result.score + 1e-12:
                    best, best_result, improved = candidate, result, True
        if log:
            log(f"  pass {done}: score {best_result.score:.4f} after {evaluations} evaluations")
        if not improved:
            break
    return SearchResult(best, best_result, evaluations, done)


@dataclass(frozen=True)
class CrossTuning:
    """Held-out estimate: each fold scored with parameters tuned on the other folds."""

    result: MetricResult  # pooled over every case-day
    by_fold: dict[int, float]
    params_by_fold: dict[int, EnsembleParams]


def cross_tune(evaluator: Evaluator, space: SearchSpace, folds: list[int], passes: int = 2,
               log: Callable[[str], None] | None = None) -> CrossTuning | None:
    """Tune on folds != f, score fold f, for each f in `folds`; None with fewer than two folds."""
    all_folds = sorted({c.fold for c in evaluator.cases})
    folds = [f for f in folds if f in all_folds]
    if len(all_folds) < 2 or not folds:
        return None
    params_by_fold, by_fold = {}, {}
    for f in folds:
        if log:
            log(f"cross-tuning: held-out fold {f}")
        tune_on = [c for c in evaluator.cases if c.fold != f]
        params_by_fold[f] = coordinate_descent(evaluator, space, tune_on, passes=passes, log=log).params
        by_fold[f] = evaluator.score(params_by_fold[f], [c for c in evaluator.cases if c.fold == f]).score
    held_out = [c for c in evaluator.cases if c.fold in params_by_fold]
    pooled = evaluator.score(lambda case: params_by_fold[case.fold], held_out)
    return CrossTuning(pooled, by_fold, params_by_fold)


def summary(result: MetricResult) -> dict[str, float]:
    """score / dice / hausdorff of a result, JSON-ready."""
    return {k: (None if math.isnan(v) else round(float(v), 6))
            for k, v in (("score", result.score), ("dice", result.dice), ("hausdorff", result.hausdorff))}
