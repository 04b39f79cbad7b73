"""Stage `submit`: predict the test split with a tuned ensemble and write the competition CSV.

`python -m src.submit --ensemble ensemble.json --data-dir DIR --out submissions/submission.csv`

Every run the ensemble needs (its members, and the classifier gate and detector crop runs) predicts
each test case-day, src.ensembling.postprocess.apply_ensemble turns the probabilities into masks,
and each (slice, class) becomes a row `id,class,predicted` (RLE over (H, W) in C order), validated
before the file is written atomically (see src.ensembling.submission). Kaggle's development phase has
an empty test/: then the stage says so and writes the sample submission with empty predictions (if
there is one). `--allow-train-fallback N` instead runs on the first N train case-days.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.core.errors import run_cli
from src.ensembling.submission import SubmitOptions, submit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ensemble", required=True, type=Path, help="ensemble.json from python -m src.ensemble tune")
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="dataset root with test/ (and sample_submission.csv)")
    parser.add_argument("--out", type=Path, default=Path("submissions/submission.csv"))
    parser.add_argument("--allow-train-fallback", type=int, default=0, metavar="N",
                        help="when test/ is empty, predict the first N train case-days instead")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default: each run's)")
    parser.add_argument("--runs-root", type=Path, default=None,
                        help="find each run as <runs-root>/<run name> instead of its recorded path (e.g. in a kernel)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="predict with folds without their done marker (killed or unfinished runs), with a warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    submit(SubmitOptions(args.ensemble, args.data_dir, args.out, args.allow_train_fallback, args.device,
                         args.batch_size, args.runs_root, args.allow_incomplete))
    return 0


if __name__ == "__main__":
    run_cli(main)
