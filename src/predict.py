"""Stage `predict`: class-probability volumes of a trained run, `python -m src.predict --run runs/NAME --split oof`.

Each fold model is rebuilt from its saved config by its stage's task and loaded from its weights.
`--split oof` predicts every case-day with the fold model that did not see it (so a TTA prediction
can replace the training-time OOF); `--split test` predicts the test split (cached first) with the
mean of the fold models, or with the fold-"all" model (`--folds all`). Output: the run's
pred_<split>/ folder, one float16 file per case-day at the original resolution (segmenters:
(Z, 3, H, W); classifiers: (Z, 3) presence; detectors: a box record {"box": [y0, y1, x0, x1]}),
and its manifest, written last, listing what was predicted and how.

TTA (`--tta hflip,vflip`) averages the plain prediction with one per listed flip: the volume is
flipped in-plane, predicted, and the output flipped back. `--gate runs/CLS` zeroes the slices
(per class) whose classifier presence probability is below `--gate-threshold`; `--gate-rule N:p`
zeroes those where at most N pixels of the run's own probabilities exceed p.
"""
from __future__ import annotations

import argparse

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.inference.predict import PredictOptions, predict_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, PredictOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    predict_run(from_args(PredictOptions, build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    run_cli(main)
