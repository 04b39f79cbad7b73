"""Stage `score`: `python -m src.score --data-dir DIR --truth T.csv --pred S.csv` prints the competition
metric of a submission, overall and per case-day (see src.metrics.scoring); on a 2D dataset (carvana, ebhi,
nnunet) `python -m src.score --data-dir DIR --pred PRED [--truth TRUTH] [--per-image OUT.csv]` prints the
dataset's Dice metric overall and per stratum (see src.metrics.scoring2d)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from src.core.atomic import atomic_path, check_writable, write_json_atomic
from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.core.outputs import check_output
from src.data.description import DatasetDescription
from src.data.formats.base import ImageFormat
from src.metrics.scoring import ScoreOptions, score_with_split, summary_record
from src.metrics.scoring2d import image_dataset, score_images


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.score", description=__doc__)
    add_arguments(parser, ScoreOptions)
    return parser


def _write_table(path: Path | None, table: pd.DataFrame) -> None:
    if path:
        with atomic_path(path, suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)


def _score_gi(opts: ScoreOptions) -> tuple[dict, str]:
    result, split = score_with_split(opts.data_dir, opts.truth, opts.pred, opts.protocol, opts.split,
                                     opts.max_image_pixels)
    _write_table(opts.per_case_day, result.per_case_day)
    summary = summary_record(result, opts.protocol, split)
    return summary, "\n".join(f"{key:<14}{value:.6f}" if isinstance(value, float) else f"{key:<14}{value}"
                              for key, value in summary.items())


def _score_2d(opts: ScoreOptions, fmt: ImageFormat, description: DatasetDescription) -> tuple[dict, str]:
    result = score_images(fmt, description, opts.data_dir, opts.pred, opts.truth, opts.split)
    _write_table(opts.per_image, result.table)
    return result.record(), result.text()


def main(argv: list[str] | None = None) -> int:
    opts = from_args(ScoreOptions, build_parser().parse_args(argv))
    dataset = image_dataset(opts.data_dir, opts.max_image_pixels)
    opts.check_kind(two_d=dataset is not None)
    for flag, out in (("--per-case-day", opts.per_case_day), ("--per-image", opts.per_image), ("--summary", opts.summary)):
        if out:
            check_output(out, flag, (opts.truth, opts.pred), opts.data_dir)
            check_writable(out)
    summary, text = _score_gi(opts) if dataset is None else _score_2d(opts, *dataset)
    if opts.summary:
        write_json_atomic(opts.summary, summary)
    print(json.dumps(summary) if opts.json else text)
    return 0


if __name__ == "__main__":
    run_cli(main)
