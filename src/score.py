"""Stage `score`: `python -m src.score --data-dir DIR --truth T.csv --pred S.csv` prints the competition
metric of a submission, overall and per case-day (see src.metrics.scoring)."""
from __future__ import annotations

import argparse
import json

from src.core.atomic import atomic_path, check_writable, write_json_atomic
from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.core.outputs import check_output
from src.metrics.scoring import ScoreOptions, score_with_split, summary_record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.score", description=__doc__)
    add_arguments(parser, ScoreOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = from_args(ScoreOptions, build_parser().parse_args(argv))
    for flag, out in (("--per-case-day", opts.per_case_day), ("--summary", opts.summary)):
        if out:
            check_output(out, flag, (opts.truth, opts.pred), opts.data_dir)
            check_writable(out)
    result, split = score_with_split(opts.data_dir, opts.truth, opts.pred, opts.protocol, opts.split,
                                     opts.max_image_pixels)
    if opts.per_case_day:
        with atomic_path(opts.per_case_day, suffix=".csv") as tmp:
            result.per_case_day.to_csv(tmp, index=False)
    summary = summary_record(result, opts.protocol, split)
    if opts.summary:
        write_json_atomic(opts.summary, summary)
    if opts.json:
        print(json.dumps(summary))
    else:
        print("\n".join(f"{key:<14}{value:.6f}" if isinstance(value, float) else f"{key:<14}{value}"
                        for key, value in summary.items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
