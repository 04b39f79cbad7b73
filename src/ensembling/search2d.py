"""The 2D ensemble search: per-image scores (`ImageResult`), the proxies it ranks candidates on
(`ImageCase`, `ImageEvaluator`) and what it may change (`ImageSearchSpace`); the coordinate descent and
the cross-tuning are the GI tuner's (src.ensembling.search.coordinate_descent, cross_tune), with the
same bar: a change is kept only if its gain clears min_gain and se_factor bootstrap standard errors of
the paired per-image gain (src.ensembling.uncertainty, through ImageResult.terms).

A proxy is one OOF image on a grid of every `stride`-th row and column, with uint8 probabilities
(p x 255, rounded): stride^2 times fewer pixels, half the bytes per pixel. It goes through the same
index_map as the full image (thresholds x 255; the minimum component size is a fraction of the image's
area, so it needs no rescaling) and is scored against the truth on the same grid, so a proxy score
estimates the exact one; the tuner rescores every result it reports on the full images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from src.ensembling.params2d import ImageEnsembleParams
from src.ensembling.postprocess2d import index_map
from src.ensembling.search import (
    GATE_THRESHOLDS,
    THRESHOLDS,
    WEIGHTS,
    Coordinate,
    field_coordinate,
    member_candidates,
    quantise,
)
from src.ensembling.uncertainty import MeanTerms
from src.metrics.overlap import confusion, overlap_scores

MIN_AREA = (0.0, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)  # min component size, fractions of the image's area
QUANT = 255.0  # a proxy's probabilities are p x QUANT (uint8)


def image_scores(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> tuple[float, float]:
    """(Dice, Jaccard) of one image, each the mean over classes (src.metrics.overlap's conventions)."""
    stats = overlap_scores(confusion(pred, truth, n_classes))
    return float(stats["dice"].mean()), float(stats["jaccard"].mean())


@dataclass(frozen=True)
class ImageResult:
    """Per image (cache key): its group (the bootstrap's unit), Dice and Jaccard, each the mean over
    classes. The dataset's "dice" metric (the score) is the mean of the images' Dice."""

    ids: tuple[str, ...]
    groups: tuple[str, ...]
    dice: np.ndarray
    jaccard: np.ndarray

    @classmethod
    def of(cls, rows: list[tuple[str, str, float, float]]) -> ImageResult:
        """From (id, group, dice, jaccard) rows."""
        return cls(tuple(r[0] for r in rows), tuple(r[1] for r in rows), np.array([r[2] for r in rows], dtype=np.float64),
                   np.array([r[3] for r in rows], dtype=np.float64))

    @classmethod
    def joined(cls, parts: list[ImageResult], order: dict[str, int]) -> ImageResult:
        """The results of disjoint sets of images as one, its images in `order` (key -> position)."""
        ids = [i for p in parts for i in p.ids]
        groups = [g for p in parts for g in p.groups]
        index = np.array(sorted(range(len(ids)), key=lambda j: order[ids[j]]), dtype=np.int64)
        dice, jaccard = (np.concatenate([getattr(p, f) for p in parts] or [np.zeros(0)]) for f in ("dice", "jaccard"))
        return cls(tuple(ids[j] for j in index), tuple(groups[j] for j in index), dice[index], jaccard[index])

    @property
    def score(self) -> float:
        return float(self.dice.mean()) if len(self.ids) else math.nan

    def over(self, ids: list[str]) -> ImageResult:
        """The result on `ids` (each once, in that order)."""
        where = {k: i for i, k in enumerate(self.ids)}
        index = np.array([where[k] for k in ids], dtype=np.int64)
        return ImageResult(tuple(ids), tuple(self.groups[i] for i in index), self.dice[index], self.jaccard[index])

    def terms(self, ids: list[str] | None = None) -> MeanTerms:
        """The per-image Dice, resampled by group (src.ensembling.uncertainty.terms_of)."""
        part = self if ids is None else self.over(list(ids))
        index = {g: i for i, g in enumerate(dict.fromkeys(part.groups))}
        return MeanTerms(part.ids, part.dice, np.array([index[g] for g in part.groups], dtype=np.int64))

    def summary(self) -> dict[str, float | None]:
        """score / dice / jaccard, JSON-ready."""
        values = (("score", self.score), ("dice", self.score),
                  ("jaccard", float(self.jaccard.mean()) if len(self.ids) else math.nan))
        return {k: (None if math.isnan(v) else round(v, 6)) for k, v in values}


@dataclass(frozen=True, eq=False)
class ImageCase:
    """One OOF image on its proxy grid: every model's uint8 (K, h, w) probabilities and the (h, w) truth."""

    key: str
    group: str  # the bootstrap's unit (ImageResult)
    fold: int
    stride: int
    probs: dict[str, np.ndarray]
    truth: np.ndarray
    presence: np.ndarray | None = None  # the gate run's (K,) float32 presence, exact (not a proxy)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.probs.values()) + self.truth.nbytes


def make_proxy(key: str, group: str, fold: int, probs: dict[str, np.ndarray], truth: np.ndarray,
               stride: int, presence: np.ndarray | None = None) -> ImageCase:
    """The proxy of one image's (K, H, W) probabilities (float16, memory-mapped) and (H, W) truth; its (K,)
    presence is kept as it is."""
    cut = lambda a: np.ascontiguousarray(a[..., ::stride, ::stride])  # noqa: E731
    return ImageCase(key, group, fold, stride, {n: quantise(cut(p)) for n, p in probs.items()}, cut(truth), presence)


class ImageEvaluator:
    """Scores 2D parameters (one set, or one per fold) on proxies with index_map: the search's evaluator."""

    def __init__(self, cases: list[ImageCase], n_classes: int):
        self.cases = cases
        self.n_classes = n_classes
        self.evaluations = 0

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cases)

    def score(self, params: ImageEnsembleParams | dict[int, ImageEnsembleParams],
              cases: list[ImageCase] | None = None) -> ImageResult:
        """The result over `cases` (default all; with per-fold params, those of its folds)."""
        self.evaluations += 1
        chosen = self.cases if cases is None else cases
        if isinstance(params, dict):
            chosen = [c for c in chosen if c.fold in params]
        pick = params.get if isinstance(params, dict) else (lambda fold: params)
        return ImageResult.of([(c.key, c.group, *image_scores(index_map(c.probs, pick(c.fold), QUANT, c.presence),
                                                              c.truth, self.n_classes))
                               for c in chosen])


def _blendable(p: ImageEnsembleParams) -> None:
    p.weight_matrix()  # ValueError when a class has no model with weight


def _weight_values(name: str) -> Callable[[ImageEnsembleParams, int], list[float]]:
    """WEIGHTS for `name` in class c, 0 only while another model has weight there."""
    def values(p: ImageEnsembleParams, c: int) -> list[float]:
        others = sum(w[c] for n, w in p.weights.items() if n != name)
        return [v for v in WEIGHTS if v > 0 or others > 0]
    return values


@dataclass(frozen=True)
class ImageSearchSpace:
    """What the 2D search may change, in this order: which models take part and their weights (with
    several), then per class the threshold, the gate threshold (with a gate run), the minimum component
    size and hole filling (one value shared by the classes without `per_class`)."""

    names: tuple[str, ...]
    n_classes: int
    per_class: bool = True
    gate: bool = False  # a gate run's presence is there to gate on

    def coordinates(self) -> list[tuple[str, Callable[[ImageEnsembleParams], list[ImageEnsembleParams]]]]:
        expand = (lambda k: k.per_class()) if self.per_class else (lambda k: k.shared())  # noqa: E731
        k = self.n_classes
        coords = []
        if len(self.names) > 1:
            coords += [(f"model {n}", member_candidates(n, _blendable)) for n in self.names]
            for n in self.names:
                coords += expand(Coordinate(f"weight {n}", _weight_values(n),
                                            lambda p, c, v, n=n: p.replace_weight(n, c, v), k))
        fields = [("thresholds", THRESHOLDS, "threshold")] + ([("gate_threshold", GATE_THRESHOLDS, "gate")] * self.gate)
        fields += [("min_area", MIN_AREA, "min area"), ("fill_holes", (False, True), "fill holes")]
        for name, values, label in fields:
            coords += expand(field_coordinate(name, values, label, k))
        return coords
