"""Stage `ensemble`: tune the blend and the post-processing on out-of-fold predictions with the real metric.

`python -m src.ensemble tune --runs runs/A runs/B [--gate runs/CLS] [--crop runs/DET] --out ensemble.json`

Searches blend weights (per model and class), the 2.5D/3D fusion weight, per-class thresholds, the
gate, minimum 3D component sizes and the z clean-up by coordinate descent on every OOF case-day, and
estimates the held-out score by cross-tuning (see src.ensembling.tune). Writes ensemble.json (runs,
parameters, scores) and prints a table of every model, the plain mean and the tuned ensemble, and
the contribution table (the held-out score with each component removed in turn).
src.ensembling.postprocess.apply_ensemble is the one code path that turns probabilities into masks,
here and in src.submit.

Runs of 2D images (Carvana, EBHI-Seg, nnU-Net 2D: their cache says so) are tuned as a 2D ensemble:
blend weights, thresholds, minimum component size and hole filling per class, on the dataset's Dice
(src.ensembling.tune2d; src.ensembling.postprocess2d.index_map is its one path to index maps).
"""
from __future__ import annotations

import argparse
import os

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.ensembling.tune import TuneOptions, tune


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    tune_parser = sub.add_parser("tune", help="tune the ensemble on OOF predictions and write ensemble.json")
    add_arguments(tune_parser, TuneOptions, defaults={"workers": min(8, os.cpu_count() or 1)})
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    tune(from_args(TuneOptions, parse_args(argv)))
    return 0


if __name__ == "__main__":
    run_cli(main)
