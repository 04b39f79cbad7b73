"""Stage `ensemble`: tune the blend and the post-processing on out-of-fold predictions with the real metric.

`python -m src.ensemble tune --runs runs/A runs/B [--gate runs/CLS] [--crop runs/DET] --out ensemble.json`

Reads each run's OOF probabilities (its pred_oof/ when complete, else the union of fold*/oof/) and
the truth from the cache, searches blend weights (per model and class), the 2.5D/3D fusion weight,
per-class thresholds, the gate (the classifier's presence threshold with --gate, else the
pixel-count rule), minimum 3D component sizes and the z clean-up by coordinate descent (see
src.ensembling.search), and estimates the held-out score by cross-tuning: for each fold f, tune on
the other folds and score fold f. Writes ensemble.json (runs, parameters, scores) and prints a
table of every model, the plain mean and the tuned ensemble. src.ensembling.postprocess.apply_ensemble is the
one code path that turns probabilities into masks, here and in src.submit.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from src.core.atomic import write_json_atomic
from src.core.errors import DataError, run_cli
from src.core.ids import CLASSES
from src.data.volumes import VolumeCache
from src.ensembling.search import (Evaluator, SearchSpace, OOFCase, coordinate_descent, cross_tune, make_case, summary)
from src.ensembling.postprocess import EnsembleParams, group_of
from src.predict import (case_day_folds, load_prediction, prediction_files, prediction_manifest,
                         resolve_cache_dir, run_folds)

VERSION = 1


# ---- the ensemble file -------------------------------------------------------------------------
def describe_run(run_dir: str | Path) -> dict:
    """A run as ensemble.json records it: path, name, stage, blend group, numbered folds, and the
    predict options its OOF was made with (TTA, input crop, gate), which test time repeats."""
    run_dir = Path(run_dir)
    folds = run_folds(run_dir)
    stage = next(iter(folds.values())).stage
    manifest = prediction_manifest(run_dir, "oof") or {}
    return {"name": run_dir.name, "path": str(run_dir), "stage": stage, "group": group_of(stage),
            "folds": [f for f in folds if f != "all"],
            "predict": {"tta": manifest.get("tta", []), "crop": manifest.get("crop"), "gate": manifest.get("gate"),
                        "gate_threshold": manifest.get("gate_threshold"), "gate_rule": manifest.get("gate_rule")}}


@dataclass(frozen=True)
class Ensemble:
    """A loaded ensemble.json."""

    runs: list[dict]
    gate: dict | None
    crop: dict | None
    params: EnsembleParams
    record: dict


def load_ensemble(path: str | Path) -> Ensemble:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: ensemble file not found (run python -m src.ensemble tune)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable ensemble file ({exc})") from None
    missing = [k for k in ("version", "runs", "params") if k not in record]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}")
    if record["version"] != VERSION:
        raise DataError(f"{path}: ensemble version {record['version']}, this code reads {VERSION}")
    params = EnsembleParams.from_dict(record["params"], str(path))
    names = [r.get("name") for r in record["runs"]]
    if sorted(names) != sorted(params.weights):
        raise DataError(f"{path}: runs {names} do not match the weighted models {sorted(params.weights)}")
    return Ensemble(record["runs"], record.get("gate"), record.get("crop"), params, record)


# ---- OOF data ----------------------------------------------------------------------------------
def _folds(runs: list[dict]) -> dict[str, int]:
    """case-day -> fold, identical in every run (else the OOF predictions are not out-of-fold together)."""
    first = case_day_folds(runs[0]["path"])
    for run in runs[1:]:
        other = case_day_folds(run["path"])
        clash = sorted(cd for cd in set(first) & set(other) if first[cd] != other[cd])
        if clash:
            raise DataError(f"{run['path']}: {clash[0]} is in fold {other[clash[0]]} but in fold {first[clash[0]]} "
                            f"of {runs[0]['path']} (train every run on the same folds file)")
    return first


def _check_probs(array: np.ndarray, shape: tuple, source: Path) -> np.ndarray:
    if array.shape != shape:
        hint = " (a classifier? pass it with --gate)" if array.ndim == 2 else ""
        raise DataError(f"{source}: probabilities of shape {array.shape}, expected {shape}{hint}")
    return array


def load_cases(runs: list[dict], cache_dir: Path, gate: str | None = None, crop: str | None = None,
               log: Callable[[str], None] = print) -> list[OOFCase]:
    """Every case-day with an OOF prediction in all runs (and gate/crop), cut to its region."""
    if len({r["name"] for r in runs}) != len(runs):
        raise DataError(f"run names must be distinct: {[r['name'] for r in runs]}")
    files = {r["name"]: prediction_files(r["path"], "oof") for r in runs}
    extra = {k: prediction_files(v, "oof") for k, v in (("gate", gate), ("crop", crop)) if v}
    folds = _folds(runs)
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


def _auxiliary(path: str | None) -> dict | None:
    if not path:
        return None
    folds = run_folds(path)
    manifest = prediction_manifest(path, "oof") or {}
    return {"path": str(path), "stage": next(iter(folds.values())).stage,
            "folds": [f for f in folds if f != "all"], "tta": manifest.get("tta", [])}


def tune(runs: list[str | Path], gate: str | Path | None = None, crop: str | Path | None = None,
         out: str | Path = "ensemble.json", holdout_folds: list[int] | None = None,
         cache_dir: str | Path | None = None, passes: int = 2, min_gain: float = 0.0, workers: int = 1,
         log: Callable[[str], None] = print) -> dict:
    """Tune the ensemble of `runs` on their OOF predictions, write `out`, return its record."""
    if not runs:
        raise DataError("--runs: name at least one run")
    members = [describe_run(r) for r in runs]
    cache_dir = Path(cache_dir) if cache_dir else resolve_cache_dir(next(iter(run_folds(runs[0]).values())), None, None)
    cases = load_cases(members, cache_dir, str(gate) if gate else None, str(crop) if crop else None, log)
    groups = {m["name"]: m["group"] for m in members}
    evaluator = Evaluator(cases, workers)
    space = SearchSpace.for_cases(cases, groups)
    plain = EnsembleParams.plain_mean(groups)
    scores = {"models": {n: summary(evaluator.score(single_model(plain, n))) for n in groups},
              "plain_mean": summary(evaluator.score(plain))}
    log("search on every OOF case-day:")
    found = coordinate_descent(evaluator, space, passes=passes, min_gain=min_gain, log=log)
    scores["tuned_in_sample"] = summary(found.result)
    folds = sorted({c.fold for c in cases}) if holdout_folds is None else holdout_folds
    crossed = cross_tune(evaluator, space, folds, passes=passes, min_gain=min_gain, log=log)
    if crossed is not None:
        scores["tuned_held_out"] = summary(crossed.result)
        scores["held_out_by_fold"] = {str(f): round(s, 6) for f, s in crossed.by_fold.items()}
        scores["gap"] = round(found.result.score - crossed.result.score, 6)
    record = {"version": VERSION, "runs": members, "gate": _auxiliary(gate), "crop": _auxiliary(crop),
              "params": found.params.to_dict(), "scores": scores,
              "oof": {"case_days": len(cases), "folds": sorted({c.fold for c in cases}), "cache_dir": str(cache_dir)},
              "search": {"passes": found.passes, "min_gain": min_gain, "evaluations": evaluator.evaluations,
                         "held_out_folds": sorted(crossed.by_fold) if crossed else []}}
    write_json_atomic(out, record)
    log(score_table(record))
    log(f"ensemble: wrote {out}")
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


def _fold_list(text: str) -> list[int] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    try:
        return [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise DataError(f"--holdout-folds {text!r}: expected comma-separated fold numbers or 'none'") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tune", help="tune the ensemble on OOF predictions and write ensemble.json")
    t.add_argument("--runs", nargs="+", required=True, type=Path, help="segmentation run folders")
    t.add_argument("--gate", type=Path, default=None, help="classifier run: its presence probabilities gate slices")
    t.add_argument("--crop", type=Path, default=None, help="detector run: its boxes may crop the masks")
    t.add_argument("--out", type=Path, default=Path("ensemble.json"))
    t.add_argument("--holdout-folds", default=None,
                   help="folds held out one at a time for the held-out estimate (default: all; 'none' skips)")
    t.add_argument("--cache-dir", type=Path, default=None, help="cache with the truth (default: the first run's)")
    t.add_argument("--passes", type=int, default=2, help="coordinate-descent passes at most (default 2)")
    t.add_argument("--min-gain", type=float, default=0.0,
                   help="keep a change only if it raises the OOF score by more than this (default 0)")
    t.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="threads scoring case-days in parallel (default: CPU count, at most 8)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune(args.runs, args.gate, args.crop, args.out, _fold_list(args.holdout_folds), args.cache_dir, args.passes,
         args.min_gain, args.workers)
    return 0


if __name__ == "__main__":
    run_cli(main)
