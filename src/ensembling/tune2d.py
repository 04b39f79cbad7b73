"""Tuning a 2D ensemble (Carvana, EBHI-Seg, nnU-Net 2D) on out-of-fold predictions: `tune_images`, which
`python -m src.ensemble tune` (src.ensembling.tune.tune) runs when the runs' cache holds 2D images.

The runs must segment the cache's channels and labels (check_image_run) on the same folds; so must the
`--gate` run classify them (the cls stage on 2D images: each image's (K,) presence), whose presence the
search may then require per class before the class is predicted in an image. Each image is read once into
a proxy sized to --memory-gb (src.ensembling.oof2d), by --workers processes (src.ensembling.shards2d),
scoring each model alone and the plain mean exactly on the way; then the GI tuner's coordinate descent
searches, on the proxies, which models take part, their weights per class, and per class the threshold,
the gate threshold (with a gate run), the minimum component size and hole filling
(src.ensembling.search2d), from the model that scores best alone on the tuning images, keeping a change
only when its gain clears --min-gain and --se-factor bootstrap standard errors of the paired per-image
gain. The held-out estimate cross-tunes (tune on the other folds, score fold f), with what each part of it
wins held out (src.ensembling.contributions: the held-out score with the part removed from every fold's
parameters), and the final choice (src.ensembling.choice) takes the tuned ensemble, the plain mean or one
model alone, whichever is best held out, with bootstrap intervals over the images. Every score reported is
exact: the dataset's metric "dice" (the mean over images of each image's Dice, mean over classes), with
the Jaccard beside it, rescored image by image from the memory-mapped files.

Untuned candidates (each model alone, the plain mean) use the runs' validation threshold, so they score
as validation did; the plain mean takes 0.5 when the runs were validated at different thresholds.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from src.core.errors import DataError
from src.data.image_cache import ImageCache
from src.ensembling import choice, contributions
from src.ensembling.choice import Candidate
from src.ensembling.ensemble_file import AuxiliaryRun, EnsembleMember, write_ensemble_file
from src.ensembling.oof2d import image_sources, proxy_strides
from src.ensembling.params2d import ImageEnsembleParams
from src.ensembling.search import SearchRules, check_holdout_folds, coordinate_descent, cross_tune
from src.ensembling.search2d import ImageSearchSpace
from src.ensembling.shards2d import ImageShardedEvaluator
from src.ensembling.tune import Clock, auxiliary_run, score_table
from src.ensembling.uncertainty import score_over
from src.inference.runs import TrainedRun, check_image_run

if TYPE_CHECKING:
    from src.ensembling.tune import TuneOptions

GI_ONLY = ("crop", "stride", "screen")  # TuneOptions fields that mean nothing on 2D images


def check_options(opts: TuneOptions, cache_dir: Path) -> None:
    """A one-line error naming the first GI-only option set to anything but its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(opts)}
    wrong = next((name for name in GI_ONLY if getattr(opts, name) != defaults[name]), None)
    if wrong:
        raise DataError(f"--{wrong}: applies to the GI data only, {cache_dir} holds 2D images")


def validation_thresholds(runs: list[TrainedRun], log: Callable[[str], None]) -> tuple[dict[str, float], float]:
    """Each run's validation threshold (its config's), and the plain mean's: theirs when shared, else 0.5."""
    thresholds = {r.name: float(r.config.get("threshold", 0.5)) for r in runs}
    shared = set(thresholds.values())
    if len(shared) > 1:
        log(f"ensemble: the runs were validated at thresholds {sorted(shared)}: the plain mean uses 0.5")
    return thresholds, shared.pop() if len(shared) == 1 else 0.5


def tune_images(opts: TuneOptions, runs: list[TrainedRun], cache_dir: Path, log: Callable[[str], None] = print) -> dict:
    """Tune the 2D ensemble of `runs` on their OOF images, write the ensemble file, return its record."""
    check_options(opts, cache_dir)
    cache = ImageCache(cache_dir)
    k = cache.description.n_classes
    runs = [check_image_run(r, cache.description, cache_dir) for r in runs]
    gate_run = auxiliary_run(opts.gate, "presence", "--gate", opts.allow_incomplete)
    if gate_run is not None:
        check_image_run(gate_run, cache.description, cache_dir, "--gate", output="presence")
    members = [EnsembleMember.of(r) for r in runs]
    names = [m.name for m in members]
    sources = image_sources(runs, cache, log, gate_run)
    folds = sorted({s.fold for s in sources})
    check_holdout_folds(opts.holdout_folds, folds, "image")
    thresholds, plain_threshold = validation_thresholds(runs, log)
    singles = {n: ImageEnsembleParams.alone(names, n, k, thresholds[n]) for n in names}
    plain = ImageEnsembleParams.plain_mean(names, k, plain_threshold)
    workers = max(1, min(opts.workers, len(sources)))
    side, strides = proxy_strides([s.shape for s in sources], len(names), k, opts.memory_gb, workers)
    log(f"ensemble: search on proxies of at most {side} px a side (stride {min(strides)}-{max(strides)}), "
        f"{workers} worker(s)")
    clock = Clock()
    space = ImageSearchSpace(tuple(names), k, opts.per_class, gate=gate_run is not None)
    rules = SearchRules(opts.passes, opts.min_gain, opts.se_factor)
    with ImageShardedEvaluator(sources, strides, cache_dir, workers, [*singles.values(), plain]) as evaluator:
        *single_results, plain_result = evaluator.baseline_results
        clock.lap("read")
        alone = dict(zip(names, single_results))  # model -> its exact OOF result alone
        scores = {"models": {n: r.summary() for n, r in alone.items()}, "plain_mean": plain_result.summary()}

        def best_alone(chosen) -> ImageEnsembleParams:
            """The search's start: the model that scores best alone on the tuning images (exact)."""
            keys = [c.key for c in chosen]
            return singles[max(names, key=lambda n: score_over(alone[n], keys))]

        start = best_alone if opts.passes else lambda chosen: plain  # no search (--passes 0): the plain mean
        log("search on every OOF image:")
        found = coordinate_descent(evaluator, space, start=start(sources), rules=rules, log=log)
        clock.lap("search")
        by_fold = cross_tune(evaluator, space, folds if opts.holdout_folds is None else list(opts.holdout_folds),
                             rules=rules, log=log, start=start)
        clock.lap("held_out_search")
        log("ensemble: exact scores on the full images")
        ablated = contributions.ablations(by_fold) if by_fold else []
        sets = [found.params] + ([by_fold] if by_fold else []) + [a.params for a in ablated if a.params]
        in_sample, *rest = evaluator.exact(sets)
        clock.lap("exact")
        proxy_bytes, workers_peak = evaluator.nbytes(), evaluator.workers_peak_rss_gb()
        evaluations = evaluator.evaluations
    scores["tuned_in_sample"] = in_sample.summary()
    untuned = [Candidate(choice.alone(n, thresholds[n]), singles[n], alone[n], alone[n]) for n in names]
    if len(names) > 1:  # with one model, the plain mean is that model alone
        untuned.append(Candidate(choice.plain(plain_threshold), plain, plain_result, plain_result))
    same = next((c.name for c in untuned if c.params == found.params), choice.TUNED)
    chosen = Candidate(same, found.params, in_sample, None)
    if rest:
        held_out, *without = rest
        scores["tuned_held_out"] = held_out.summary()
        scores["held_out_by_fold"] = {str(f): round(held_out.over([s.key for s in sources if s.fold == f]).score, 6)
                                      for f in by_fold}
        scores["gap"] = round(scores["tuned_in_sample"]["score"] - scores["tuned_held_out"]["score"], 6)
        scores[contributions.KEY] = contributions.rows(ablated, scores["tuned_held_out"]["score"],
                                                       [r.summary()["score"] for r in without])
        tuned = Candidate(choice.TUNED, found.params, in_sample, held_out)
        chosen, scores[choice.KEY] = choice.choose(untuned + [tuned], list(held_out.ids), unit="images")
    scores[choice.WRITTEN] = chosen.summary()
    search = {"passes": found.passes, "min_gain": opts.min_gain, "se_factor": opts.se_factor,
              "per_class": opts.per_class, "evaluations": evaluations,
              "held_out_folds": sorted(by_fold) if by_fold else [],
              "proxy": {"side": side, "strides": [min(strides), max(strides)], "quantised": "uint8",
                        "bytes": proxy_bytes, "in_sample_score": round(found.result.score, 6)},
              "workers": workers, "workers_peak_rss_gb": round(workers_peak, 3), "seconds": clock.laps}
    oof = {"images": len(sources), "folds": folds, "cache_dir": str(cache_dir),
           "stages": {m.name: m.stage for m in members}, "gate": str(gate_run.path) if gate_run else None,
           "metric": cache.description.metric,
           "thresholds": {"models": thresholds, "plain_mean": plain_threshold}}
    params = chosen.params.only(chosen.params.used_models())  # what test time predicts: the models it weighs
    kept = [m for m in members if m.name in params.weights]
    gate = AuxiliaryRun.of(gate_run) if gate_run is not None and params.gated else None  # only when it gates
    record = write_ensemble_file(opts.out, kept, [gate] if gate else [], gate, None, params, dims="2d",
                                 scores=scores, oof=oof, search=search)
    log(score_table(record))
    if scores.get(contributions.KEY):
        log("\n" + contributions.table(scores[contributions.KEY]))
    if scores.get(choice.KEY):
        log("\n" + choice.table(scores[choice.KEY]))
    log(f"ensemble: wrote {opts.out}")
    return record
