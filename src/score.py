"""Stage `score`: `python -m src.score --data-dir DIR --truth T.csv --pred S.csv` prints the competition
metric of a submission, overall and per case-day (see src.metrics.scoring)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.core.atomic import atomic_path, check_writable, write_json_atomic
from src.core.errors import run_cli
from src.core.outputs import check_output
from src.metrics.competition import PROTOCOLS
from src.metrics.scoring import SPLITS, score_with_split, summary_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.score", description=__doc__)
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset root in the Kaggle layout")
    parser.add_argument("--truth", required=True, type=Path, help="truth CSV (segmentation or predicted column)")
    parser.add_argument("--pred", required=True, type=Path, help="submission CSV (predicted column)")
    parser.add_argument("--split", choices=SPLITS, help="image split (default: the one holding the truth's ids)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="kaggle")
    parser.add_argument("--per-case-day", type=Path, metavar="OUT.csv", help="write the per-case-day table here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--summary", type=Path, metavar="OUT.json", help="also write the JSON object here")
    args = parser.parse_args(argv)
    for flag, out in (("--per-case-day", args.per_case_day), ("--summary", args.summary)):
        if out:
            check_output(out, flag, (args.truth, args.pred), args.data_dir)
            check_writable(out)
    result, split = score_with_split(args.data_dir, args.truth, args.pred, args.protocol, args.split)
    if args.per_case_day:
        with atomic_path(args.per_case_day, suffix=".csv") as tmp:
            result.per_case_day.to_csv(tmp, index=False)
    summary = summary_record(result, args.protocol, split)
    if args.summary:
        write_json_atomic(args.summary, summary)
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(f"{key:<14}{value:.6f}" if isinstance(value, float) else f"{key:<14}{value}"
                        for key, value in summary.items()))
    return 0


if __name__ == "__main__":
    run_cli(main)
