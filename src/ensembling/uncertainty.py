"""How sure a score is: bootstrap over case-days of the competition metric, paired between results.

A MetricResult's per-case-day table holds what the metric aggregates (src.metrics.competition.aggregate):
each case-day's mean Dice over its scored rows and their count, and its Hausdorff. The score of any
re-weighting of the case-days follows exactly from them: Dice = sum(w x dice x rows) / sum(w x rows),
Hausdorff = the w-weighted mean over case-days that have one (the empty-set conventions as in
aggregate). A bootstrap resample is a vector of counts w (multinomial), so B resamples are one
matrix product; results over the same case-days use the same resamples, so their difference is
paired (what matters when two results share most of their errors).

A 2D result (src.ensembling.search2d.ImageResult: the mean over images of each image's Dice) gives
MeanTerms instead, its `terms`: the score of a re-weighting is the weighted mean. `terms_of` picks.
Its resampled units are the images' groups (the cars of Carvana: the 16 views of one car are drawn
together, since they share their errors), each image its own group where the data has none; a
bootstrap over correlated images would call a gain that holds on a few cars beyond noise.

Used twice: the search keeps a change only if its gain exceeds `se_factor` standard errors of the
paired gain (src.ensembling.search), and the tuner's final choice is shown with 95% intervals
(src.ensembling.tune, src.ensembling.tune2d).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from src.metrics.competition import DICE_WEIGHT, HAUSDORFF_WEIGHT, MetricResult

RESAMPLES = 1000  # for the intervals the tuner reports
SE_RESAMPLES = 200  # for the search's standard errors (many comparisons, a coarser estimate is enough)
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class CaseTerms:
    """Per case-day: the sum of its scored Dice rows, their count, its Hausdorff (NaN when none)."""

    case_days: tuple[str, ...]
    dice_sum: np.ndarray
    rows: np.ndarray
    hausdorff: np.ndarray

    @classmethod
    def of(cls, result: MetricResult, case_days: list[str] | None = None) -> CaseTerms:
        """The terms of `result`, in the order of `case_days` (default: the result's own)."""
        table = result.per_case_day.set_index("case_day")
        if case_days is not None:
            table = table.loc[list(case_days)]
        rows = table["n_rows_scored"].to_numpy(dtype=np.float64)
        dice_sum = np.where(rows > 0, table["dice"].to_numpy(dtype=np.float64), 0.0) * rows
        return cls(tuple(table.index), dice_sum, rows, table["hausdorff"].to_numpy(dtype=np.float64))

    @property
    def n_units(self) -> int:
        """What a bootstrap resamples: the case-days."""
        return len(self.case_days)

    def scores(self, weights: np.ndarray) -> np.ndarray:
        """The metric under each row of case-day weights (K, N) (a row of ones: the result's own score)."""
        has_h = ~np.isnan(self.hausdorff)
        dice_rows = weights @ self.rows
        dice = np.divide(weights @ self.dice_sum, dice_rows, out=np.ones(len(weights)), where=dice_rows > 0)
        h_count = weights @ has_h.astype(np.float64)
        h_sum = weights @ np.where(has_h, self.hausdorff, 0.0)
        hausdorff = np.divide(h_sum, h_count, out=np.zeros(len(weights)), where=h_count > 0)
        return DICE_WEIGHT * dice + HAUSDORFF_WEIGHT * (1.0 - hausdorff)


@dataclass(frozen=True)
class MeanTerms:
    """Per image: the value whose plain mean is the score, and the index of its group (0 .. G-1)."""

    case_days: tuple[str, ...]  # the images' ids (named as CaseTerms names them)
    values: np.ndarray
    groups: np.ndarray  # what a bootstrap resamples: the groups, each image with its group's weight

    @property
    def n_units(self) -> int:
        return int(self.groups.max()) + 1 if len(self.groups) else 0

    def scores(self, weights: np.ndarray) -> np.ndarray:
        """The weighted mean under each row of group weights (K, G)."""
        per_image = weights[:, self.groups]
        return (per_image @ self.values) / per_image.sum(axis=1)


def terms_of(result, case_days: list[str] | None = None) -> CaseTerms | MeanTerms:
    """A GI MetricResult's CaseTerms, or a 2D result's own terms, in the order of `case_days` (default its own)."""
    return CaseTerms.of(result, case_days) if isinstance(result, MetricResult) else result.terms(case_days)


@lru_cache(maxsize=8)
def resample_counts(n: int, resamples: int, seed: int = SEED) -> np.ndarray:
    """(resamples, n) multinomial counts: how often each of n case-days is drawn in each resample."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
    counts.setflags(write=False)
    return counts


def bootstrap(result: MetricResult, case_days: list[str] | None = None, resamples: int = RESAMPLES) -> np.ndarray:
    """The score of each bootstrap resample of the case-days (fixed seed: the same resamples for
    every result over the same number of case-days, so differences are paired)."""
    terms = terms_of(result, case_days)
    return terms.scores(resample_counts(terms.n_units, resamples))


def score_over(result: MetricResult, case_days: list[str]) -> float:
    """The score of `result` over `case_days` (each once): its own score when they are all of its case-days."""
    terms = terms_of(result, case_days)
    return float(terms.scores(np.ones((1, terms.n_units)))[0])


def score_and_bootstrap(result: MetricResult, case_days: list[str]) -> tuple[float, np.ndarray]:
    """score_over and bootstrap of one result, its per-case-day terms computed once."""
    terms = terms_of(result, case_days)
    n = terms.n_units
    return float(terms.scores(np.ones((1, n)))[0]), terms.scores(resample_counts(n, RESAMPLES))


def paired_gain_se(new: MetricResult, old: MetricResult) -> float:
    """The bootstrap standard error of new.score - old.score over the same case-days."""
    terms = terms_of(old)
    case_days = list(terms.case_days)
    if terms.n_units < 2:
        return 0.0
    gains = bootstrap(new, case_days, SE_RESAMPLES) - bootstrap(old, case_days, SE_RESAMPLES)
    return float(np.std(gains, ddof=1))


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap samples."""
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)
