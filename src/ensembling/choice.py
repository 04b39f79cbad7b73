"""The tuner's final choice: the tuned ensemble, the plain mean or one member alone, whichever scores
best held out, with bootstrap intervals so a user sees when a difference is noise.

Each model alone and the plain mean (threshold 0.5, no post-processing) are not tuned, so their OOF
scores are already held-out estimates; the tuned ensemble's is the cross-tuned one (every choice of
the search, member selection included, made without the fold it is scored on). All are compared on
the same case-days (those of the held-out folds). Ties go to the simpler candidate (a model alone,
then the plain mean, then the tuned ensemble). Picking the best of a few candidates is itself a
choice made on these case-days, so the written score is slightly optimistic when candidates are
close: the intervals, and the paired interval of each candidate's difference to the written one,
say how close they are.

The 2D tuner (src.ensembling.tune2d) makes the same choice over images: its candidates hold 2D
parameters and results (src.ensembling.search2d), untuned at the runs' validation threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from src.ensembling.params import EnsembleParams
from src.ensembling.search import summary
from src.ensembling.uncertainty import LEVEL, RESAMPLES, SEED, interval, score_and_bootstrap
from src.metrics.competition import MetricResult

if TYPE_CHECKING:
    from src.ensembling.params2d import ImageEnsembleParams
    from src.ensembling.search2d import ImageResult

KEY = "choice"  # under the ensemble record's "scores": the candidates compared
WRITTEN = "written"  # under "scores": the candidate written, with its scores
TUNED = "tuned ensemble"


def plain(threshold: float = 0.5) -> str:
    """The candidate name of the plain mean at `threshold`."""
    return f"plain mean @{threshold:g}"


PLAIN = plain()


def alone(name: str, threshold: float = 0.5) -> str:
    """The candidate name of a model used alone at `threshold`."""
    return f"{name} alone @{threshold:g}"


def name_of(params: EnsembleParams) -> str:
    """The candidate name of parameters: a model alone, the plain mean, else the tuned ensemble."""
    for name in params.groups:
        if params == EnsembleParams.alone(params.groups, name):
            return alone(name)
    return PLAIN if params == EnsembleParams.plain_mean(params.groups) else TUNED


@dataclass(frozen=True)
class Candidate:
    """What could be written: its parameters, its score on the data it was tuned on and its held-out
    estimate (per case-day; None without one). Untuned candidates: the same result twice."""

    name: str
    params: EnsembleParams | ImageEnsembleParams
    in_sample: MetricResult | ImageResult
    held_out: MetricResult | ImageResult | None

    def summary(self) -> dict:
        """The record of the written candidate: its name, in-sample and held-out scores."""
        return {"name": self.name, "in_sample": _summary(self.in_sample),
                "held_out": _summary(self.held_out) if self.held_out is not None else None}


def _summary(result: MetricResult | ImageResult) -> dict:
    """A GI result's score / dice / hausdorff (search.summary), a 2D result's own summary."""
    return summary(result) if isinstance(result, MetricResult) else result.summary()


def choose(candidates: list[Candidate], case_days: list[str], unit: str = "case-days") -> tuple[Candidate, dict]:
    """The candidate with the best score over `case_days` (the first of ties: list the simpler first),
    and the record: every candidate's score, its interval, and its paired difference to the chosen one
    with that difference's interval. `unit`: what `case_days` are ("images" on 2D data), the record's
    key of their count."""
    own, samples = {}, {}
    for c in candidates:
        own[c.name], samples[c.name] = score_and_bootstrap(c.held_out, case_days)
    chosen = max(candidates, key=lambda c: (own[c.name], -candidates.index(c)))
    rows = {}
    for c in candidates:
        low, high = interval(samples[c.name])
        delta_low, delta_high = interval(samples[c.name] - samples[chosen.name])
        rows[c.name] = {"score": round(own[c.name], 6), "low": round(low, 6), "high": round(high, 6),
                        "delta": round(own[c.name] - own[chosen.name], 6),
                        "delta_low": round(delta_low, 6), "delta_high": round(delta_high, 6)}
    resampled = unit if unit != "images" else "the images' groups (a group's images drawn together)"
    record = {"written": chosen.name, unit.replace("-", "_"): len(case_days),
              "interval": f"{LEVEL:.0%} bootstrap over {resampled} ({RESAMPLES} resamples, seed {SEED}); "
                          "delta: paired difference to the written candidate",
              "candidates": rows}
    return chosen, record


def table(record: dict) -> str:
    """The choice as aligned text: each candidate's held-out score, interval and difference to the
    written one, the written one marked."""
    rows = record["candidates"]
    unit = "images" if "images" in record else "case-days"
    title = f"final choice (held-out, {record[unit.replace('-', '_')]} {unit})"
    width = max(len(title), *(len(n) for n in rows)) + 4
    lines = [f"{title:<{width}}{'score':>8}{'95% interval':>18}{'vs written':>12}{'95% interval':>20}"]
    for name, r in rows.items():
        mark = "  <- written" if name == record["written"] else ""
        score_span = f"[{r['low']:.4f}, {r['high']:.4f}]"
        delta_span = f"[{r['delta_low']:+.4f}, {r['delta_high']:+.4f}]"
        lines.append(f"{name:<{width}}{r['score']:>8.4f}{score_span:>18}{r['delta']:>+12.4f}{delta_span:>20}{mark}")
    return "\n".join(lines)
