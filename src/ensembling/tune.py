"""Tuning an ensemble on out-of-fold predictions with the real metric: `tune(TuneOptions(...))`.

Reads each run's OOF probabilities (its complete oof predictions, else the union of its folds'
training-time OOF) and the truth from the cache, searches blend weights (per model and class), the
2.5D/3D fusion weight, per-class thresholds, the gate (the classifier's presence threshold with a
gate run, else the pixel-count rule), minimum 3D component sizes and the z clean-up by coordinate
descent (src.ensembling.search), and estimates the held-out score by cross-tuning: for each fold f,
tune on the other folds and score fold f. Writes the ensemble file and prints a table of every
model, the plain mean and the tuned ensemble.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from src.core.artifacts import load_prediction, write_ensemble
from src.core.atomic import check_writable
from src.core.errors import DataError
from src.core.ids import CLASSES
from src.data.volumes import VolumeCache
from src.engine.stages import get_stage
from src.ensembling.params import EnsembleParams
from src.ensembling.search import (
    Evaluator,
    OOFCase,
    SearchSpace,
    coordinate_descent,
    cross_tune,
    make_case,
    summary,
)
from src.inference.predict import resolve_cache_dir
from src.inference.runs import (
    case_day_folds,
    prediction_files,
    prediction_manifest,
    run_folds,
)


def describe_run(run_dir: str | Path, allow_incomplete: bool = False) -> dict:
    """A run as ensemble.json records it: path, name, stage, blend group, numbered folds, and the
    predict options its OOF was made with (TTA, input crop, gate), which test time repeats."""
    run_dir = Path(run_dir)
    folds = run_folds(run_dir, allow_incomplete)
    stage = get_stage(next(iter(folds.values())).stage)
    if not stage.segmenter:
        raise DataError(f"{run_dir}: a {stage.name} run predicts {stage.output}, not probabilities "
                        f"(pass a classifier with --gate, a detector with --crop)")
    manifest = prediction_manifest(run_dir, "oof") or {}
    return {"name": run_dir.name, "path": str(run_dir), "stage": stage.name, "group": stage.group,
            "folds": [f for f in folds if f != "all"],
            "predict": {"tta": manifest.get("tta", []), "crop": manifest.get("crop"), "gate": manifest.get("gate"),
                        "gate_threshold": manifest.get("gate_threshold"), "gate_rule": manifest.get("gate_rule")}}


@dataclass(frozen=True)
class TuneOptions:
    """What `python -m src.ensemble tune` was asked."""

    runs: tuple[Path, ...]
    gate: Path | None = None  # classifier run: its presence probabilities gate slices
    crop: Path | None = None  # detector run: its boxes may crop the masks
    out: Path = Path("ensemble.json")
    holdout_folds: tuple[int, ...] | None = None  # None: every fold; (): no held-out estimate
    cache_dir: Path | None = None  # cache with the truth; default the first run's
    passes: int = 2
    min_gain: float = 0.0
    workers: int = 1
    allow_incomplete: bool = False  # tune on folds without their done marker (with a warning)

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(Path(r) for r in self.runs))
        object.__setattr__(self, "out", Path(self.out))
        if not self.runs:
            raise DataError("--runs: name at least one run")
        if self.passes < 0:
            raise DataError(f"--passes {self.passes}: must be >= 0")
        if not np.isfinite(self.min_gain) or self.min_gain < 0:
            raise DataError(f"--min-gain {self.min_gain}: must be a number >= 0")
        if self.workers < 1:
            raise DataError(f"--workers {self.workers}: must be at least 1")


def _folds(runs: list[dict], allow_incomplete: bool = False) -> dict[str, int]:
    """case-day -> fold, identical in every run (else the OOF predictions are not out-of-fold together)."""
    first = case_day_folds(runs[0]["path"], allow_incomplete)
    for run in runs[1:]:
        other = case_day_folds(run["path"], allow_incomplete)
        clash = sorted(cd for cd in set(first) & set(other) if first[cd] != other[cd])
        if clash:
            raise DataError(f"{run['path']}: {clash[0]} is in fold {other[clash[0]]} but in fold {first[clash[0]]} "
                            f"of {runs[0]['path']} (train every run on the same folds file)")
    return first


def _check_probs(array: np.ndarray, shape: tuple, source: Path) -> np.ndarray:
    if array.shape != shape:
        hint = " (a classifier? pass it with --gate)" if array.ndim == 2 else ""
        raise DataError(f"{source}: probabilities of shape {array.shape}, expected {shape}{hint}")
    if not np.isfinite(array).all():
        raise DataError(f"{source}: holds NaN or inf probabilities")
    return array


def load_cases(runs: list[dict], cache_dir: Path, gate: str | None = None, crop: str | None = None,
               log: Callable[[str], None] = print, allow_incomplete: bool = False) -> list[OOFCase]:
    """Every case-day with an OOF prediction in all runs (and gate/crop), cut to its region."""
    if len({r["name"] for r in runs}) != len(runs):
        raise DataError(f"run names must be distinct: {[r['name'] for r in runs]}")
    files = {r["name"]: prediction_files(r["path"], "oof", allow_incomplete) for r in runs}
    extra = {k: prediction_files(v, "oof", allow_incomplete) for k, v in (("gate", gate), ("crop", crop)) if v}
    folds = _folds(runs, allow_incomplete)
    common = set(folds).intersection(*map(set, files.values()), *map(set, extra.values()))
    cache = VolumeCache(cache_dir)
    ordered = [cd for cd in cache.case_days("train") if cd in common]
    if not ordered:
        raise DataError(f"no case-day has out-of-fold predictions in every run and in the cache {cache_dir}")
    skipped = len(set().union(*map(set, files.values()))) - len(ordered)
    left_out = f" ({skipped} without every prediction left out)" if skipped else ""
    log(f"ensemble: {len(ordered)} OOF case-days{left_out}")
    cases = []
    for cd in ordered:
        truth = np.asarray(cache.load(cd).mask) > 0
        probs = {name: _check_probs(load_prediction(f[cd]), truth.shape, f[cd]) for name, f in files.items()}
        gate_probs = None
        if gate:
            gate_probs = _check_probs(load_prediction(extra["gate"][cd]), truth.shape[:2], extra["gate"][cd])
        box = load_prediction(extra["crop"][cd])["box"] if crop else None
        cases.append(make_case(cd, folds[cd], probs, truth, gate_probs, box))
    return cases


# ---- tuning ------------------------------------------------------------------------------------
def single_model(params: EnsembleParams, name: str) -> EnsembleParams:
    """The plain mean with every weight but `name`'s set to zero."""
    weights = {n: ((1.0,) * len(CLASSES) if n == name else (0.0,) * len(CLASSES)) for n in params.weights}
    return EnsembleParams(weights=weights, groups=params.groups)


def _auxiliary(path: str | None, output: str, flag: str, allow_incomplete: bool = False) -> dict | None:
    """A gate or crop run as the ensemble file records it; its stage must predict `output`."""
    if not path:
        return None
    folds = run_folds(path, allow_incomplete)
    stage = get_stage(next(iter(folds.values())).stage)
    if stage.output != output:
        raise DataError(f"{flag} {path}: a {stage.name} run predicts {stage.output}, {flag} needs {output}")
    manifest = prediction_manifest(path, "oof") or {}
    return {"path": str(path), "stage": stage.name,
            "folds": [f for f in folds if f != "all"], "tta": manifest.get("tta", [])}


def tune(opts: TuneOptions, log: Callable[[str], None] = print) -> dict:
    """Tune the ensemble of the runs on their OOF predictions, write the ensemble file, return its record."""
    check_writable(opts.out)  # fail now, not after the search
    members = [describe_run(r, opts.allow_incomplete) for r in opts.runs]
    gate = _auxiliary(opts.gate, "presence", "--gate", opts.allow_incomplete)
    crop = _auxiliary(opts.crop, "box", "--crop", opts.allow_incomplete)
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else resolve_cache_dir(
        next(iter(run_folds(opts.runs[0], opts.allow_incomplete).values())), None, None)
    cases = load_cases(members, cache_dir, str(opts.gate) if opts.gate else None,
                       str(opts.crop) if opts.crop else None, log, opts.allow_incomplete)
    groups = {m["name"]: m["group"] for m in members}
    evaluator = Evaluator(cases, opts.workers)
    space = SearchSpace.for_cases(cases, groups)
    plain = EnsembleParams.plain_mean(groups)
    scores = {"models": {n: summary(evaluator.score(single_model(plain, n))) for n in groups},
              "plain_mean": summary(evaluator.score(plain))}
    log("search on every OOF case-day:")
    found = coordinate_descent(evaluator, space, passes=opts.passes, min_gain=opts.min_gain, log=log)
    scores["tuned_in_sample"] = summary(found.result)
    folds = sorted({c.fold for c in cases}) if opts.holdout_folds is None else list(opts.holdout_folds)
    crossed = cross_tune(evaluator, space, folds, passes=opts.passes, min_gain=opts.min_gain, log=log)
    if crossed is not None:
        scores["tuned_held_out"] = summary(crossed.result)
        scores["held_out_by_fold"] = {str(f): round(s, 6) for f, s in crossed.by_fold.items()}
        scores["gap"] = round(found.result.score - crossed.result.score, 6)
    record = {"runs": members, "gate": gate, "crop": crop,
              "params": found.params.to_dict(), "scores": scores,
              "oof": {"case_days": len(cases), "folds": sorted({c.fold for c in cases}), "cache_dir": str(cache_dir)},
              "search": {"passes": found.passes, "min_gain": opts.min_gain, "evaluations": evaluator.evaluations,
                         "held_out_folds": sorted(crossed.by_fold) if crossed else []}}
    write_ensemble(opts.out, record)
    log(score_table(record))
    log(f"ensemble: wrote {opts.out}")
    return record


def score_table(record: dict) -> str:
    """The OOF table: each model and the plain mean at threshold 0.5, the tuned ensemble in-sample and held-out."""
    scores = record["scores"]
    stage = {r["name"]: r["stage"] for r in record["runs"]}
    rows = [(f"{n} ({stage[n]}) @0.5", s) for n, s in scores["models"].items()]
    rows.append(("plain mean @0.5", scores["plain_mean"]))
    rows.append(("tuned ensemble, in-sample", scores["tuned_in_sample"]))
    if "tuned_held_out" in scores:
        rows.append((f"tuned ensemble, held-out ({len(scores['held_out_by_fold'])} folds)", scores["tuned_held_out"]))
    width = max(len(r[0]) for r in rows) + 2
    fmt = lambda v: "   nan" if v is None else f"{v:.4f}"  # noqa: E731
    title = f"OOF ({record['oof']['case_days']} case-days)"
    lines = [f"{title:<{width}}{'score':>8}{'dice':>8}{'hausdorff':>11}"]
    lines += [f"{label:<{width}}{fmt(s['score']):>8}{fmt(s['dice']):>8}{fmt(s['hausdorff']):>11}" for label, s in rows]
    if "gap" in scores:
        lines.append(f"{'gap in-sample - held-out':<{width}}{scores['gap']:>8.4f}")
    return "\n".join(lines)
