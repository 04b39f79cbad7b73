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
from pathlib import Path

from src.core.errors import run_cli
from src.inference.predict import SPLITS, PredictOptions, predict_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="run folder, e.g. runs/unet_r18")
    parser.add_argument("--split", choices=SPLITS, default="oof")
    parser.add_argument("--folds", default=None, help="comma-separated folds or 'all' (default: every numbered fold)")
    parser.add_argument("--tta", default="", help="comma-separated flips: hflip, vflip")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset root (default: the run's)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: that of --data-dir, else the run's)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/pred_<split>)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--gate", type=Path, default=None, help="classifier run whose presence gates the slices")
    parser.add_argument("--gate-threshold", type=float, default=0.5, help="presence probability kept (default 0.5)")
    parser.add_argument("--gate-rule", default=None,
                        help="PIXELS:PROB, keep a slice-class with more than PIXELS above PROB")
    parser.add_argument("--crop", type=Path, default=None, help="detector run whose boxes crop the model input")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="use folds without their done marker (killed or unfinished runs), with a warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    predict_run(PredictOptions(args.run, args.split, args.folds, args.tta, args.data_dir, args.cache_dir, args.out,
                               args.batch_size, args.device, args.gate, args.gate_threshold, args.gate_rule,
                               args.crop, args.allow_incomplete))
    return 0


if __name__ == "__main__":
    run_cli(main)
