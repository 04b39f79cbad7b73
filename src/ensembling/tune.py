"""Tuning an ensemble on out-of-fold predictions with the real metric: `tune(TuneOptions(...))`.

Reads each run's OOF probabilities (its complete oof predictions, else the union of its folds'
training-time OOF) and the truth from the cache, one case-day at a time, into proxies that fit
`memory_gb` (src.ensembling.shards), then searches by coordinate descent (src.ensembling.search):
which models take part, blend weights, the 2.5D/3D fusion weight, thresholds, the gate (the
classifier's presence threshold with a gate run, else the pixel-count rule), minimum 3D component
sizes and the z clean-up (per class, or shared by the classes); a
change kept only when its gain clears min_gain and se_factor standard errors. It estimates the
held-out score by cross-tuning (for each fold f, tune on the other folds and score fold f), scores
each component removed in turn from every fold's parameters (src.ensembling.contributions: what it
wins held out), and makes the final choice (src.ensembling.choice): the tuned ensemble, the plain
mean or one model alone, whichever is best held out, with bootstrap intervals. Every reported score
is the exact metric on the full volumes (the proxies only rank candidates). Writes the ensemble file
(the chosen parameters and only the runs they use) and prints the OOF table, the contribution table
and the choice.

Runs whose cache holds 2D images (Carvana, EBHI-Seg, nnU-Net 2D) are tuned by src.ensembling.tune2d
instead, with the same options less the GI's own (--crop, --stride, --screen).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from src.core.atomic import check_writable
from src.core.errors import DataError
from src.data.image_cache import is_image_cache
from src.ensembling import choice, contributions
from src.ensembling.choice import Candidate
from src.ensembling.ensemble_file import AuxiliaryRun, EnsembleMember, write_ensemble_file
from src.ensembling.oof import case_sources
from src.ensembling.params import EnsembleParams
from src.ensembling.search import (
    SearchRules,
    SearchSpace,
    check_holdout_folds,
    coordinate_descent,
    cross_tune,
    summary,
)
from src.ensembling.shards import ShardedEvaluator, choose_stride
from src.ensembling.uncertainty import score_over
from src.inference.runs import TrainedRun
from src.metrics.competition import aggregate


@dataclass(frozen=True)
class TuneOptions:
    """What `python -m src.ensemble tune` was asked."""

    runs: tuple[Path, ...] = field(metadata={"help": "segmentation run folders", "nargs": "+"})
    gate: Path | None = field(default=None, metadata={
        "help": "classifier run: its presence probabilities gate slices (2D data: images)"})
    crop: Path | None = field(default=None, metadata={"help": "GI data: detector run, its boxes may crop the masks"})
    out: Path = Path("ensemble.json")
    holdout_folds: tuple[int, ...] | None = field(default=None, metadata={
        "help": "folds held out one at a time for the held-out estimate (default: all; 'none' skips)"})
    cache_dir: Path | None = field(default=None, metadata={
        "help": "cache with the truth (default: the first run's)"})
    passes: int = field(default=2, metadata={"help": "coordinate-descent passes at most (default 2)"})
    min_gain: float = field(default=0.0, metadata={
        "help": "keep a change only if it raises the OOF score by more than this (default 0)"})
    se_factor: float = field(default=1.0, metadata={
        "help": "keep a change only if its gain is above this many bootstrap standard errors of the paired "
                "gain over the tuning case-days (default 1; 0: off)"})
    per_class: bool = field(default=True, metadata={
        "help": "a value per class for weights, fusion, thresholds, gate, sizes and z clean-up (--no-per-class: "
                "one value shared by the classes)"})
    workers: int = field(default=1, metadata={
        "help": "processes, each holding a shard of the case-days (default: CPU count, at most 8; 2D data: "
                "one process)"})
    memory_gb: float = field(default=8.0, metadata={
        "help": "memory the tuner may hold: its proxies get the finest grid that fits (default 8)"})
    stride: int | None = field(default=None, metadata={
        "help": "GI data: the proxies' in-plane grid step (1 = every pixel) instead of the finest of at most "
                "96 px a side that fits --memory-gb"})
    screen: int = field(default=16, metadata={
        "help": "GI data: rank each coordinate's candidates on this many case-days first, then score the best "
                "on all (with at least twice as many; 0: off; default 16)"})
    allow_incomplete: bool = field(default=False, metadata={
        "help": "tune on folds without their done marker (killed or unfinished runs), with a warning"})

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(Path(r) for r in self.runs))
        object.__setattr__(self, "out", Path(self.out))
        if not self.runs:
            raise DataError("--runs: name at least one run")
        if self.passes < 0:
            raise DataError(f"--passes {self.passes}: must be >= 0")
        if not np.isfinite(self.min_gain) or self.min_gain < 0:
            raise DataError(f"--min-gain {self.min_gain}: must be a number >= 0")
        if not np.isfinite(self.se_factor) or self.se_factor < 0:
            raise DataError(f"--se-factor {self.se_factor}: must be a number >= 0")
        if self.workers < 1:
            raise DataError(f"--workers {self.workers}: must be at least 1")
        if not np.isfinite(self.memory_gb) or self.memory_gb <= 0:
            raise DataError(f"--memory-gb {self.memory_gb}: must be a number > 0")
        if self.screen < 0:
            raise DataError(f"--screen {self.screen}: must be >= 0")
        if self.stride is not None and self.stride < 1:
            raise DataError(f"--stride {self.stride}: must be at least 1")


# ---- tuning ------------------------------------------------------------------------------------
def auxiliary_run(path: Path | str | None, output: str, flag: str, allow_incomplete: bool) -> TrainedRun | None:
    """A gate or crop run, loaded; its stage must predict `output`."""
    return TrainedRun.load(path, allow_incomplete).require(output, flag) if path else None


def tune(opts: TuneOptions, log: Callable[[str], None] = print) -> dict:
    """Tune the ensemble of the runs on their OOF predictions, write the ensemble file, return its record.

    The search runs on proxies (src.ensembling.shards); every score it reports is exact. The
    contribution table (scores["contributions"]) is measured on the held-out estimate only: without
    one (no held-out folds, or a single fold) there is none, since in-sample a component's gain is
    partly fitted noise."""
    check_writable(opts.out)  # fail now, not after the search
    runs = [TrainedRun.load(r, opts.allow_incomplete) for r in opts.runs]
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else runs[0].cache_dir()
    if is_image_cache(cache_dir):
        from src.ensembling.tune2d import tune_images  # here: tune2d uses this module's Clock and score_table
        return tune_images(opts, runs, cache_dir, log)
    members = [EnsembleMember.of(r) for r in runs]
    gate_run = auxiliary_run(opts.gate, "presence", "--gate", opts.allow_incomplete)
    crop_run = auxiliary_run(opts.crop, "box", "--crop", opts.allow_incomplete)
    gate, crop = (AuxiliaryRun.of(r) if r else None for r in (gate_run, crop_run))
    used = [(m, AuxiliaryRun.of(auxiliary_run(path, output, f"{m.path}: predicted with", opts.allow_incomplete)))
            for m in members for path, output in ((m.predict.gate, "presence"), (m.predict.crop, "box")) if path]
    sources = case_sources(runs, cache_dir, gate_run, crop_run, log)
    check_holdout_folds(opts.holdout_folds, sorted({s.fold for s in sources}))
    groups = {m.name: m.group for m in members}
    workers = min(opts.workers, len(sources))
    stride = opts.stride or choose_stride([s.shape for s in sources], len(members), opts.memory_gb, workers)
    plain = EnsembleParams.plain_mean(groups)
    baseline = [EnsembleParams.alone(groups, n) for n in groups] + [plain]
    log(f"ensemble: search on proxies of stride {stride}, {workers} worker(s)")
    clock = Clock()
    with ShardedEvaluator(sources, stride, workers, baseline) as evaluator:
        clock.lap("read")
        *singles, plain_result = evaluator.baseline_results
        scores = {"models": {n: summary(r) for n, r in zip(groups, singles)}, "plain_mean": summary(plain_result)}
        space = SearchSpace.for_cases(evaluator.cases, groups, opts.per_class)
        rules = SearchRules(opts.passes, opts.min_gain, opts.se_factor, opts.screen)
        alone = dict(zip(groups, singles))  # model -> its exact OOF result alone

        def best_alone(cases) -> EnsembleParams:
            """The search's start: the model that scores best alone on the tuning case-days (exact)."""
            case_days = [c.case_day for c in cases]
            return EnsembleParams.alone(groups, max(groups, key=lambda n: score_over(alone[n], case_days)))

        start = best_alone if opts.passes else lambda cases: plain  # no search (--passes 0): the plain mean
        log("search on every OOF case-day:")
        found = coordinate_descent(evaluator, space, start=start(evaluator.cases), rules=rules, log=log)
        clock.lap("search")
        folds = sorted({c.fold for c in evaluator.cases}) if opts.holdout_folds is None else list(opts.holdout_folds)
        by_fold = cross_tune(evaluator, space, folds, rules=rules, log=log, start=start)
        clock.lap("held_out_search")
        log("ensemble: exact scores on the full volumes")
        ablated = contributions.ablations(by_fold, space.crop) if by_fold else []
        sets = [found.params] + ([by_fold] if by_fold else []) + [a.params for a in ablated if a.params]
        in_sample, *rest = evaluator.exact(sets)
        clock.lap("exact")
        proxy_bytes, workers_peak = evaluator.nbytes(), evaluator.workers_peak_rss_gb()
        evaluations = evaluator.evaluations
    scores["tuned_in_sample"] = summary(aggregate(in_sample))
    chosen = Candidate(choice.name_of(found.params), found.params, aggregate(in_sample), None)
    if rest:
        held_out, *without = rest
        fold_of = {c.case_day: c.fold for c in evaluator.cases}
        held_out_result = aggregate(held_out)
        scores["tuned_held_out"] = summary(held_out_result)
        scores["held_out_by_fold"] = {str(f): round(aggregate([i for i in held_out if fold_of[i[0]] == f]).score, 6)
                                      for f in by_fold}
        scores["gap"] = round(scores["tuned_in_sample"]["score"] - scores["tuned_held_out"]["score"], 6)
        scores[contributions.KEY] = contributions.rows(
            ablated, scores["tuned_held_out"]["score"], [summary(aggregate(s))["score"] for s in without])
        untuned = [Candidate(choice.alone(n), EnsembleParams.alone(groups, n), r, r) for n, r in zip(groups, singles)]
        if len(groups) > 1:  # with one model, the plain mean is that model alone
            untuned.append(Candidate(choice.PLAIN, plain, plain_result, plain_result))
        tuned = Candidate(choice.TUNED, found.params, chosen.in_sample, held_out_result)
        chosen, scores[choice.KEY] = choice.choose(untuned + [tuned], [case_day for case_day, _ in held_out])
    scores[choice.WRITTEN] = chosen.summary()
    search = {"passes": found.passes, "min_gain": opts.min_gain, "se_factor": opts.se_factor,
              "per_class": opts.per_class,
              "evaluations": evaluations,
              "held_out_folds": sorted(by_fold) if by_fold else [],
              "proxy": {"stride": stride, "quantised": "uint8", "bytes": int(proxy_bytes),
                        "in_sample_score": round(found.result.score, 6)},
              "screen": opts.screen, "workers": workers, "workers_peak_rss_gb": round(workers_peak, 3),
              "seconds": clock.laps}
    oof = {"case_days": len(sources), "folds": sorted({s.fold for s in sources}), "cache_dir": str(cache_dir),
           "stages": {m.name: m.stage for m in members}, "gate": gate.path if gate else None,
           "crop": crop.path if crop else None}
    params = chosen.params.only(chosen.params.used_models())  # what test time predicts: the models it weighs
    kept = [m for m in members if m.name in params.weights]
    gate, crop = (gate if any(t > 0 for t in params.gate_threshold) else None), (crop if params.crop else None)
    auxiliary = [a for a in (gate, crop) if a] + [a for m, a in used if m in kept]
    record = write_ensemble_file(opts.out, kept, auxiliary, gate, crop, params, scores=scores, oof=oof, search=search)
    log(score_table(record))
    if scores.get(contributions.KEY):
        log("\n" + contributions.table(scores[contributions.KEY]))
    if scores.get(choice.KEY):
        log("\n" + choice.table(scores[choice.KEY]))
    log(f"ensemble: wrote {opts.out}")
    return record


class Clock:
    """Wall seconds of the tuner's phases: reading (with the exact scores of each model and the plain
    mean), the search, the held-out searches, the exact rescoring; recorded in the ensemble file."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 1)
        self._last = now


def score_table(record: dict) -> str:
    """The OOF table: each model and the plain mean untuned (GI: at threshold 0.5; 2D: at the runs'
    validation thresholds), the tuned ensemble in-sample and held-out; GI: score, Dice and Hausdorff,
    2D: score (= Dice) and Jaccard, over the images."""
    scores, oof = record["scores"], record["oof"]
    stage = oof["stages"]
    if record.get("dims") == "2d":
        at = {**oof["thresholds"]["models"], None: oof["thresholds"]["plain_mean"]}
        title, last = f"OOF ({oof['images']} images)", "jaccard"
    else:
        at = dict.fromkeys([*scores["models"], None], 0.5)
        title, last = f"OOF ({oof['case_days']} case-days)", "hausdorff"
    rows = [(f"{n} ({stage[n]}) @{at[n]:g}", s) for n, s in scores["models"].items()]
    rows.append((f"plain mean @{at[None]:g}", scores["plain_mean"]))
    rows.append(("tuned ensemble, in-sample", scores["tuned_in_sample"]))
    if "tuned_held_out" in scores:
        rows.append((f"tuned ensemble, held-out ({len(scores['held_out_by_fold'])} folds)", scores["tuned_held_out"]))
    width = max(len(r[0]) for r in rows) + 2
    fmt = lambda v: "   nan" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"{title:<{width}}{'score':>8}{'dice':>8}{last:>11}"]
    lines += [f"{label:<{width}}{fmt(s['score']):>8}{fmt(s['dice']):>8}{fmt(s[last]):>11}" for label, s in rows]
    if "gap" in scores:
        lines.append(f"{'gap in-sample - held-out':<{width}}{scores['gap']:>8.4f}")
    lines.append(f"written: {scores[choice.WRITTEN]['name']}")
    return "\n".join(lines)
