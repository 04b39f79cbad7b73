"""Stage `submit`: predict the test split with a tuned ensemble and write the competition CSV (GI data).

`python -m src.submit --ensemble ensemble.json --data-dir DIR --out submissions/submission.csv`

Every run the ensemble needs (its members, and the classifier gate and detector crop runs) predicts
each test case-day, src.ensembling.postprocess.apply_ensemble turns the probabilities into masks,
and each (slice, class) becomes a row `id,class,predicted` (RLE over (H, W) in C order), validated
before the file is written atomically (see src.ensembling.submission). Kaggle's development phase has
an empty test/: then the stage says so and writes the sample submission with empty predictions (if
there is one). `--allow-train-fallback N` instead runs on the first N train case-days.

On 2D data (Carvana, EBHI-Seg, nnU-Net 2D; the data folder's format says which) a 2D ensemble file
(tuned by src.ensemble on 2D runs), or the runs' plain mean thresholded as validation does, predicts
each test image where it lies into the dataset's form: the Carvana CSV, or label images named like the
inputs (see src.ensembling.submission2d):

`python -m src.submit --ensemble ensemble2d.json --data-dir DIR --out OUT [--images FOLDER]`
`python -m src.submit --runs runs/A [runs/B ...] --data-dir DIR --out OUT [--images FOLDER] [--threshold P] [--tta hflip]`
"""
from __future__ import annotations

import argparse

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.ensembling.submission import SubmitOptions, submit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.submit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, SubmitOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    submit(from_args(SubmitOptions, build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    run_cli(main)
