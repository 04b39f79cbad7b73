"""Fast evaluation of ensemble parameters on out-of-fold predictions, and the coordinate-descent search.

Two kinds of case. An exact case holds a case-day cut once to its region of interest, the bounding box
of the voxels where some model's probability exceeds the lowest threshold any candidate can use (or
the truth is set), in float16. No candidate can mark a voxel outside it (a blend never exceeds its
largest input, and every post-processing step only removes), so scoring the region pasted back into
the full volume is exact; the Evaluator never builds the full volume. A proxy case (make_case with
`stride`) is the same region on an in-plane grid of every `stride`-th row and column, with uint8
probabilities (p x 255, rounded): `stride`^2 times fewer voxels and half the bytes per voxel. On it
the Evaluator scales what counts pixels (gate pixel counts, component sizes) by 1 / stride^2 and
measures the Hausdorff on the grid in the full volume's coordinates against a cached distance
transform of the truth (src.ensembling.proxy_distance), so a proxy score estimates the exact one; the
tuner searches on proxies and rescores its results exactly (src.ensembling.shards).

Blends, masks and Dice rows are kept per class, so a candidate re-runs only its class's
post-processing, and the Hausdorff only for case-days whose masks changed.

Search: coordinate descent over small candidate grids: first member selection (each model added or
dropped in turn, while the others can blend alone), then in the order post-processing applies them: per-model
weights, 2.5D/3D fusion, thresholds, the gate (classifier threshold, or the pixel-count rule),
detector crop on/off, minimum component size, z clean-up; each per class, or one value shared by
the classes (SearchSpace.per_class).
Each coordinate tries all its values with the others fixed and keeps a value only if it raises the
score by more than SearchRules' bar (min_gain, and a number of standard errors of the paired gain);
passes repeat until one changes nothing (or `passes` is reached). The result is never below its
start on the tuning data: the tuner starts from the best model alone there, so that with the bar a
model joins only when it clearly helps (forward selection), and the plain mean is the default start.

The 2D search (src.ensembling.search2d) runs the same coordinate_descent and cross_tune with its own
evaluator, parameters and coordinates (Coordinate, field_coordinate, member_candidates of any class count).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

import numba
import numpy as np

from src.core.errors import DataError
from src.data.half import HALF_TO_FLOAT, bits, mark_above
from src.ensembling.params import N_CLASSES, EnsembleParams, effective_weights
from src.ensembling.postprocess import blend_class, postprocess_class
from src.ensembling.proxy_distance import ProxyDistance
from src.ensembling.uncertainty import paired_gain_se
from src.metrics.competition import (
    CaseDayScore,
    HausdorffToTruth,
    MetricResult,
    aggregate,
    dice_rows,
)

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
    probs: dict[str, np.ndarray]  # name -> (z, 3, y, x): float16 (exact) or uint8 p x 255 (proxy)
    truth: np.ndarray  # bool (z, 3, y, x)
    gate: np.ndarray | None = None  # (z, 3) presence probabilities
    box: tuple[int, int, int, int] | None = None  # detector box in the region's (grid) coordinates
    stride: int = 0  # 0: exact; s >= 1: proxy on every s-th row and column, uint8

    @property
    def has_gate(self) -> bool:
        return self.gate is not None

    @property
    def has_box(self) -> bool:
        return self.box is not None

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.probs.values()) + self.truth.nbytes


def region_of_interest(probs: Iterable[np.ndarray], truth: np.ndarray, threshold: float = ROI_THRESHOLD
                       ) -> tuple[slice, slice, slice]:
    """Bounding box (z, y, x) of the voxels above `threshold` in any of `probs`, or in the truth."""
    active = truth.any(axis=1)
    for p in probs:
        if p.dtype == np.float16:
            mark_above(p, threshold, active)  # one pass over the bits
        else:
            active |= (p > threshold).any(axis=1)
    if not active.any():
        return slice(0, 0), slice(0, 0), slice(0, 0)
    box = []
    for axis in range(3):
        hits = np.flatnonzero(active.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def quantise(probs: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 p x 255, rounded (float16 through a table of every value)."""
    if probs.dtype == np.float16:
        return _QUANTISED[bits(probs)]
    return np.clip(np.rint(np.asarray(probs, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


with np.errstate(invalid="ignore"):
    _QUANTISED = quantise(HALF_TO_FLOAT)  # float16 bits -> uint8 (NaN and inf never reach it: checked on load)


def make_case(case_day: str, fold: int, probs: dict[str, np.ndarray], truth: np.ndarray,
              gate: np.ndarray | None = None, box=None, stride: int = 0,
              roi: tuple[slice, slice, slice] | None = None) -> OOFCase:
    """Cut full-size arrays of one case-day to its region of interest (given, or found here): exact
    (stride 0), or a proxy on every stride-th row and column of it with uint8 probabilities."""
    z, y, x = roi = roi or region_of_interest(probs.values(), truth)
    step = max(stride, 1)
    view = lambda a: a[z, :, y.start:y.stop:step, x.start:x.stop:step]  # noqa: E731
    cut = lambda a: np.ascontiguousarray(view(a))  # noqa: E731
    local_box = None
    if box is not None:
        y0, y1, x0, x1 = (int(v) for v in box)
        # grid row j is row y.start + j * step: inside [y0, y1) for j in [ceil((y0 - start) / step), ...)
        local_box = tuple(-((start - v) // step) for v, start in
                          ((y0, y.start or 0), (y1, y.start or 0), (x0, x.start or 0), (x1, x.start or 0)))
    if stride == 0:  # float16 stays a view (of a memory-mapped file: nothing copied for a case read once)
        convert = lambda a: view(a) if a.dtype == np.float16 else cut(a).astype(np.float16)  # noqa: E731
    else:
        convert = lambda a: quantise(view(a))  # noqa: E731
    return OOFCase(case_day, fold, tuple(truth.shape), roi, {k: convert(v) for k, v in probs.items()},
                   cut(truth).astype(bool), None if gate is None else np.asarray(gate)[z], local_box, stride)


@numba.njit(cache=True, nogil=True)
def _blend_quantised(arrays, weights, c):
    """uint8 (Z, H, W): the weighted mean of class c of uint8 (Z, 3, H, W) arrays, rounded."""
    z, _, h, w = arrays[0].shape
    acc = np.zeros((z, h, w), dtype=np.float32)
    for m in range(len(arrays)):
        wm = np.float32(weights[m])
        if wm == 0:
            continue
        a = arrays[m]
        for i in range(z):
            for j in range(h):
                for k in range(w):
                    acc[i, j, k] += wm * a[i, c, j, k]
    out = np.empty((z, h, w), dtype=np.uint8)
    for i in range(z):
        for j in range(h):
            for k in range(w):
                out[i, j, k] = np.uint8(min(acc[i, j, k] + np.float32(0.5), np.float32(255)))
    return out


def blend_proxy(case: OOFCase, params: EnsembleParams, c: int) -> np.ndarray:
    """Class c of the blend of a proxy case, uint8 like its probabilities."""
    names = list(params.weights)
    weights = effective_weights(params, names)[:, c]
    return _blend_quantised(tuple(case.probs[n] for n in names), weights, c)


def proxy_scale(case: OOFCase) -> tuple[float, float, float]:
    """The full volume's size in steps of the case's grid along (z, y, x): distances on the grid in
    the metric's normalised coordinates are grid steps / this."""
    z, _, h, w = case.shape
    step = max(case.stride, 1)
    return float(z), h / step, w / step


def grid_params(params: EnsembleParams, stride: int) -> EnsembleParams:
    """The parameters as they act on a proxy grid: probabilities x 255 (uint8), pixel counts and
    component sizes / stride^2 (a count of at least one stays on)."""
    area = stride * stride
    scale = lambda counts: tuple(max(1, round(n / area)) if n > 0 else 0 for n in counts)  # noqa: E731
    return dataclasses.replace(params, thresholds=tuple(t * 255 for t in params.thresholds),
                               gate_prob=tuple(q * 255 for q in params.gate_prob),
                               gate_pixels=scale(params.gate_pixels), min_size=scale(params.min_size))


Params = EnsembleParams | dict[int, EnsembleParams]  # one for every case, or one per fold


def check_thresholds(params: EnsembleParams) -> None:
    """Region scoring is exact only for thresholds at or above ROI_THRESHOLD."""
    used = list(params.thresholds) + [q for n, q in zip(params.gate_pixels, params.gate_prob) if n > 0]
    if min(used) < ROI_THRESHOLD:
        raise ValueError(f"thresholds below {ROI_THRESHOLD} can mark voxels outside the regions of interest")


class Evaluator:
    """Scores ensemble parameters on OOF cases with the competition metric.

    Every coordinate of the search changes one class, and a class's masks depend only on its own
    parameters (EnsembleParams.class_key), so per case-day and class it keeps the last KEEP masks
    (bit-packed) with their Dice rows, and the blend of the last weights: a candidate re-runs
    post-processing and Dice for one class only. The 3D Hausdorff (of the class-OR volume) is kept for
    the last MEMO distinct OR-masks (keyed by a hash), so a candidate that leaves a case-day's masks
    unchanged (most gate, size, z and crop candidates for most case-days) costs no Hausdorff.
    Everything is computed on the regions of interest (exact for exact cases: see the module doc).
    Case-days are scored in parallel by shards of them in worker processes (src.ensembling.shards).
    """

    KEEP = 3
    MEMO = 32

    def __init__(self, cases: list[OOFCase]):
        self.cases = cases
        self.evaluations = 0
        self._exact = {c.case_day: HausdorffToTruth(c.truth.any(axis=1), (c.shape[0], *c.shape[2:]),
                                                    tuple(r.start or 0 for r in c.roi)) for c in cases if not c.stride}
        self._distance = {c.case_day: ProxyDistance(c.truth.any(axis=1), proxy_scale(c)) for c in cases if c.stride}
        self._blends: dict[tuple[str, int], tuple[tuple, np.ndarray]] = {}
        self._classes = {(c.case_day, k): OrderedDict() for c in cases for k in range(N_CLASSES)}
        self._hausdorff = {c.case_day: OrderedDict() for c in cases}

    def _blended(self, case: OOFCase, params: EnsembleParams, c: int) -> np.ndarray:
        key = params.blend_key(c)
        cached = self._blends.get((case.case_day, c))
        if cached is None or cached[0] != key:
            value = blend_class(case.probs, params, c) if case.stride == 0 else blend_proxy(case, params, c)
            cached = self._blends[(case.case_day, c)] = (key, value)
        return cached[1]

    def _class(self, case: OOFCase, params: EnsembleParams, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Class c's region mask (z, y, x) and its Dice rows (z,) under `params` (on the case's grid)."""
        key = params.class_key(c)
        cache = self._classes[(case.case_day, c)]
        if key in cache:
            cache.move_to_end(key)
            packed, dice = cache[key]
            shape = case.truth.shape[:1] + case.truth.shape[2:]
            return np.unpackbits(packed, count=math.prod(shape)).reshape(shape).view(bool), dice
        mask = postprocess_class(self._blended(case, params, c), case.gate, params, c, case.box)
        dice = dice_rows(mask[:, None], case.truth[:, c:c + 1])[:, 0]
        cache[key] = (np.packbits(mask), dice)
        if len(cache) > self.KEEP:
            cache.popitem(last=False)
        return mask, dice

    def _case_score(self, case: OOFCase, params: EnsembleParams) -> CaseDayScore:
        """The case-day's score from its region: Dice rows outside it are NaN (both empty), the
        Hausdorff is placed in the full volume by shape and origin (in grid units for a proxy)."""
        classes = [self._class(case, params, c) for c in range(N_CLASSES)]
        pred_or = np.logical_or.reduce([mask for mask, _ in classes])
        key = hashlib.blake2b(np.packbits(pred_or).tobytes(), digest_size=16).digest()
        memo = self._hausdorff[case.case_day]
        if key in memo:
            memo.move_to_end(key)
        else:
            if case.stride:
                memo[key] = self._distance[case.case_day].hausdorff(pred_or)
            else:
                memo[key] = self._exact[case.case_day](pred_or)
            if len(memo) > self.MEMO:
                memo.popitem(last=False)
        dice = np.full(case.shape[:2], np.nan)  # (Z, 3), as score_case_day gives
        dice[case.roi[0]] = np.stack([rows for _, rows in classes], axis=1)
        return CaseDayScore(dice, memo[key])

    def nbytes(self) -> int:
        """Bytes held for the cases: their arrays and the proxies' truth distances."""
        return sum(c.nbytes for c in self.cases) + sum(d.nbytes for d in self._distance.values())

    def case_scores(self, params: Params, cases: list[OOFCase] | None = None) -> list[tuple[str, CaseDayScore]]:
        """(case_day, score) of `cases` (default all; with per-fold params, those of its folds)."""
        chosen = self.cases if cases is None else cases
        if isinstance(params, dict):
            chosen = [c for c in chosen if c.fold in params]
        pick = params.get if isinstance(params, dict) else (lambda fold: params)
        for p in {id(pick(c.fold)): pick(c.fold) for c in chosen}.values():
            check_thresholds(p)
        on_grid: dict[tuple[int, int], EnsembleParams] = {}

        def run(case: OOFCase) -> CaseDayScore:
            p = pick(case.fold)
            if case.stride:
                key = (id(p), case.stride)
                if key not in on_grid:
                    on_grid[key] = grid_params(p, case.stride)
                p = on_grid[key]
            return self._case_score(case, p)

        return [(c.case_day, run(c)) for c in chosen]

    def score(self, params: Params, cases: list[OOFCase] | None = None) -> MetricResult:
        """The metric over `cases` (default all); `params` may be one per fold."""
        self.evaluations += 1
        return aggregate(self.case_scores(params, cases))


@dataclass(frozen=True)
class Coordinate:
    """One parameter of the search: its candidate values for class c given the current parameters, and
    how to set a class's value (of `classes` classes: the GI's three, or a 2D dataset's)."""

    label: str
    values: Callable[[EnsembleParams, int], list]
    assign: Callable[[EnsembleParams, int, object], EnsembleParams]
    classes: int = N_CLASSES

    def per_class(self) -> list[tuple[str, Callable[[EnsembleParams], list[EnsembleParams]]]]:
        """One coordinate per class."""
        return [(f"{self.label} c{c}", lambda p, c=c: [self.assign(p, c, v) for v in self.values(p, c)])
                for c in range(self.classes)]

    def shared(self) -> list[tuple[str, Callable[[EnsembleParams], list[EnsembleParams]]]]:
        """One coordinate setting every class to the same value (the values every class allows)."""
        def candidates(p: EnsembleParams) -> list[EnsembleParams]:
            allowed = [self.values(p, c) for c in range(self.classes)]
            out = []
            for v in allowed[0]:
                if all(v in other for other in allowed[1:]):
                    q = p
                    for c in range(self.classes):
                        q = self.assign(q, c, v)
                    out.append(q)
            return out
        return [(self.label, candidates)]


@dataclass(frozen=True)
class SearchSpace:
    """What the search may change: which models take part (with several), weights inside groups with
    several models, fusion when both groups exist, the classifier gate when its probabilities exist
    (else the pixel rule), the crop when boxes exist; pixel counts and component sizes scale with the
    median slice area of the data.

    `per_class` False shares one value across the classes for each per-class coordinate: a third of
    the free parameters (measured on the demo's and the smoke recipe's OOF, it lost held out to per
    class values under the standard-error bar, so it is an option, not the default)."""

    groups: dict[str, str]
    slice_area: float
    classifier: bool = False
    crop: bool = False
    per_class: bool = True

    @classmethod
    def for_cases(cls, cases: list[OOFCase], groups: dict[str, str], per_class: bool = True) -> SearchSpace:
        area = float(np.median([c.shape[2] * c.shape[3] for c in cases]))
        return cls(dict(groups), area, classifier=all(c.has_gate for c in cases), crop=all(c.has_box for c in cases),
                   per_class=per_class)

    def _counts(self, fractions) -> tuple[int, ...]:
        return tuple(sorted({max(1, round(f * self.slice_area)) for f in fractions}))

    def coordinates(self) -> list[tuple[str, Callable[[EnsembleParams], list[EnsembleParams]]]]:
        """(label, params -> candidate params) in search order (members first, then post-processing's)."""
        expand = (lambda k: k.per_class()) if self.per_class else (lambda k: k.shared())  # noqa: E731
        groups = list(self.groups.values())
        coords = [(f"model {name}", member_candidates(name)) for name in self.groups] if len(groups) > 1 else []
        for name, group in self.groups.items():
            if groups.count(group) > 1:
                coords += expand(Coordinate(f"weight {name}", _weight_values(name),
                                            lambda p, c, v, n=name: p.replace_weight(n, c, v)))
        if set(groups) == {"2d", "3d"}:
            coords += expand(Coordinate("fusion", _fusion_values, lambda p, c, v: p.replace_class("fusion", c, v)))
        coords += expand(field_coordinate("thresholds", THRESHOLDS, "threshold")) + expand(self._gate())
        if self.crop:  # one switch for every class
            coords.append(("crop", lambda p: [dataclasses.replace(p, crop=v) for v in (False, True)]))
        coords += expand(field_coordinate("min_size", (0,) + self._counts(SIZE_AREA), "min size"))
        coords += expand(Coordinate("z clean-up", lambda p, c: list(Z_RULES), lambda p, c, v: p.replace_class(
            "z_min_run", c, v[0]).replace_class("z_largest", c, v[1])))
        return coords

    def _gate(self) -> Coordinate:
        """Classifier thresholds when its probabilities exist, else (pixels, probability) of the pixel rule."""
        if self.classifier:
            return field_coordinate("gate_threshold", GATE_THRESHOLDS, "gate")
        rules = [(n, q) for n in (0,) + self._counts(GATE_AREA) for q in (GATE_PROBS if n else (0.5,))]
        return Coordinate("gate", lambda p, c: rules,
                          lambda p, c, v: p.replace_class("gate_pixels", c, v[0]).replace_class("gate_prob", c, v[1]))


def field_coordinate(name: str, values: tuple, label: str | None = None, classes: int = N_CLASSES) -> Coordinate:
    """A per-class field of the parameters (GI or 2D: their replace_class) over fixed candidate values."""
    return Coordinate(label or name, lambda p, c: list(values), lambda p, c, v: p.replace_class(name, c, v), classes)


def _blendable(p: EnsembleParams) -> None:
    """ValueError unless every class has a model with weight."""
    effective_weights(p, list(p.weights))


def member_candidates(name: str, blendable: Callable[[EnsembleParams], None] = _blendable,
                      ) -> Callable[[EnsembleParams], list[EnsembleParams]]:
    """Member selection: the parameters without `name` while it has weight (and the others can blend
    alone: `blendable` raises no ValueError), with it (weight 1) while it has none."""
    def candidates(p: EnsembleParams) -> list[EnsembleParams]:
        if not any(w > 0 for w in p.weights[name]):
            return [p.with_model(name)]
        dropped = p.without_model(name)
        try:
            blendable(dropped)
        except ValueError:  # it was the only model with weight for some class
            return []
        return [dropped]
    return candidates


def _fusion_values(p: EnsembleParams, c: int) -> list[float]:
    """FUSION while both groups have weight in class c (after member selection one may have none)."""
    both = all(any(p.weights[n][c] > 0 for n, g in p.groups.items() if g == group) for group in ("2d", "3d"))
    return list(FUSION) if both else []


def _weight_values(name: str) -> Callable[[EnsembleParams, int], list[float]]:
    def values(p: EnsembleParams, c: int) -> list[float]:
        group = p.groups[name]
        others = sum(w[c] for n, w in p.weights.items() if n != name and p.groups[n] == group)
        return [v for v in WEIGHTS if v > 0 or others > 0]
    return values


@dataclass(frozen=True)
class SearchResult:
    params: EnsembleParams
    result: MetricResult
    passes: int


def screening_sample(cases: list, size: int) -> list | None:
    """Every k-th of `cases` (about `size` of them, spread over the folds in the cases' order), or None
    when there are fewer than 2 x size cases (then every candidate is scored on all of them)."""
    if size <= 0 or len(cases) < 2 * size:
        return None
    step = len(cases) / size
    return [cases[int(i * step)] for i in range(size)]


@dataclass(frozen=True)
class SearchRules:
    """How the search decides: at most `passes` passes; a change is kept only if it raises the score by
    more than `min_gain` and by more than `se_factor` bootstrap standard errors of its paired gain over
    the tuning case-days (src.ensembling.uncertainty: the bar is high where the data is small or noisy,
    low at scale); candidates screened on `screen` case-days first (0: off)."""

    passes: int = 2
    min_gain: float = 0.0
    se_factor: float = 1.0
    screen: int = 0


def coordinate_descent(evaluator: Evaluator, space: SearchSpace, cases: list[OOFCase] | None = None,
                       start: EnsembleParams | None = None, rules: SearchRules = SearchRules(),
                       log: Callable[[str], None] | None = None) -> SearchResult:
    """Greedy coordinate descent from `start` (default the plain mean) on `cases` (default all), by `rules`.

    With `rules.screen` > 0 and at least 2 x screen cases, a coordinate's candidates are first ranked
    on a fixed sample of `screen` case-days (screening_sample); only the best of them, and only if it
    beats the current parameters on the sample by min_gain, is scored on every case and kept if it wins
    there too: the cost of a coordinate falls from k full scorings to at most one, plus k on the sample."""
    chosen = evaluator.cases if cases is None else cases
    sample = screening_sample(chosen, rules.screen)
    gain = max(rules.min_gain, 1e-12)
    best = start or EnsembleParams.plain_mean(space.groups)
    best_result = evaluator.score(best, chosen)
    best_on_sample = evaluator.score(best, sample).score if sample is not None else None
    evaluations, done = 1 + (sample is not None), 0  # this search's own count, for the log
    coordinates = space.coordinates()
    for done in range(1, rules.passes + 1):
        improved = False
        for _, candidates in coordinates:
            options = [c for c in candidates(best) if c != best]
            if sample is not None and options:
                on_sample = [evaluator.score(c, sample).score for c in options]
                evaluations += len(options)
                top = max(range(len(options)), key=on_sample.__getitem__)  # the first of ties
                # only a candidate that wins on the sample is worth scoring on every case-day
                options = [options[top]] if on_sample[top] > best_on_sample + gain else []
            for candidate in options:
                result = evaluator.score(candidate, chosen)
                evaluations += 1
                if _wins(result, best_result, gain, rules.se_factor):
                    best, best_result, improved = candidate, result, True
                    if sample is not None:
                        best_on_sample = on_sample[top]
        if log:
            log(f"  pass {done}: score {best_result.score:.4f} after {evaluations} evaluations")
        if not improved:
            break
    return SearchResult(best, best_result, done)


def _wins(result: MetricResult, best: MetricResult, gain: float, se_factor: float) -> bool:
    """Whether `result` beats `best` by more than `gain` and by more than se_factor standard errors."""
    delta = result.score - best.score
    return delta > gain and (se_factor <= 0 or delta > se_factor * paired_gain_se(result, best))


def check_holdout_folds(requested: tuple[int, ...] | None, folds: list[int], unit: str = "case-day") -> None:
    """A one-line error naming --holdout-folds when it names a fold none of the OOF `unit`s is in."""
    unknown = sorted(set(requested or ()) - set(folds))
    if unknown:
        raise DataError(f"--holdout-folds {unknown[0]}: no OOF {unit} is in that fold "
                        f"(folds: {', '.join(map(str, sorted(folds)))})")


def cross_tune(evaluator: Evaluator, space: SearchSpace, folds: list[int], rules: SearchRules = SearchRules(),
               log: Callable[[str], None] | None = None,
               start: Callable[[list], EnsembleParams] | None = None) -> dict[int, EnsembleParams] | None:
    """For each f in `folds`, the parameters tuned on the folds != f from start(those cases) (default
    the plain mean): to score fold f with, the held-out estimate, which so includes every choice the
    search makes, member selection and the start too; None with fewer than two folds."""
    all_folds = sorted({c.fold for c in evaluator.cases})
    folds = [f for f in folds if f in all_folds]
    if len(all_folds) < 2 or not folds:
        return None
    params_by_fold = {}
    for f in folds:
        if log:
            log(f"cross-tuning: held-out fold {f}")
        tune_on = [c for c in evaluator.cases if c.fold != f]
        params_by_fold[f] = coordinate_descent(evaluator, space, tune_on, start(tune_on) if start else None, rules,
                                               log).params
    return params_by_fold


def summary(result: MetricResult) -> dict[str, float]:
    """score / dice / hausdorff of a result, JSON-ready."""
    return {k: (None if math.isnan(v) else round(float(v), 6))
            for k, v in (("score", result.score), ("dice", result.dice), ("hausdorff", result.hausdorff))}
