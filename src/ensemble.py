"""Stage `ensemble`: tune the blend and the post-processing on out-of-fold predictions with the real metric.

`python -m src.ensemble tune --runs runs/A runs/B [--gate runs/CLS] [--crop runs/DET] --out ensemble.json`

Searches blend weights (per model and class), the 2.5D/3D fusion weight, per-class thresholds, the
gate, minimum 3D component sizes and the z clean-up by coordinate descent on every OOF case-day, and
estimates the held-out score by cross-tuning (see src.ensembling.tune). Writes ensemble.json (runs,
parameters, scores) and prints a table of every model, the plain mean and the tuned ensemble, and
the contribution table (the held-out score with each component removed in turn).
src.ensembling.postprocess.apply_ensemble is the one code path that turns probabilities into masks,
here and in src.submit.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from src.core.errors import DataError, run_cli
from src.ensembling.tune import TuneOptions, tune


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
                   help="processes, each holding a shard of the case-days (default: CPU count, at most 8)")
    t.add_argument("--memory-gb", type=float, default=8.0,
                   help="memory the tuner may hold: its proxies get the finest grid that fits (default 8)")
    t.add_argument("--stride", type=int, default=None,
                   help="the proxies' in-plane grid step (1 = every pixel) instead of the finest of at most 96 px "
                        "a side that fits --memory-gb")
    t.add_argument("--screen", type=int, default=16,
                   help="rank each coordinate's candidates on this many case-days first, then score the best on "
                        "all (with at least twice as many; 0: off; default 16)")
    t.add_argument("--allow-incomplete", action="store_true",
                   help="tune on folds without their done marker (killed or unfinished runs), with a warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folds = _fold_list(args.holdout_folds)
    tune(TuneOptions(tuple(args.runs), args.gate, args.crop, args.out, None if folds is None else tuple(folds),
                     args.cache_dir, args.passes, args.min_gain, args.workers, args.memory_gb, args.stride,
                     args.screen, args.allow_incomplete))
    return 0


if __name__ == "__main__":
    run_cli(main)
