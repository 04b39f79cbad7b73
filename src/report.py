"""Stage `report`: `python -m src.report --runs runs/A runs/B [--ensemble ensemble.json] --out reports/NAME`
writes index.html with PNG figures: training curves, per-case-day scores, overlays, the presence
report of classifiers, the ensemble table (see src.reporting.build)."""
from __future__ import annotations

import argparse
from pathlib import Path

from src.core.errors import run_cli
from src.reporting.build import build_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, type=Path, help="run folders (runs/<name>)")
    parser.add_argument("--ensemble", type=Path, default=None, help="ensemble.json whose scores to show")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache with images and masks (default: each run's)")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset whose default cache to use")
    parser.add_argument("--title", default=None, help="page title (default: names the runs)")
    parser.add_argument("--out", type=Path, required=True, help="report folder, e.g. reports/NAME")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="report folds without their done marker (unfinished runs), with a warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = build_report(args.runs, args.out, args.ensemble, args.cache_dir, args.data_dir, args.title,
                          args.allow_incomplete)
    print(f"wrote {report.index} ({len(report.figures)} figures)")
    return 0


if __name__ == "__main__":
    run_cli(main)
