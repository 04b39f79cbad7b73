"""Stage `report`: `python -m src.report --runs runs/A runs/B [--ensemble ensemble.json] --out reports/NAME`
writes index.html with PNG figures: training curves, per-case-day scores, overlays, the presence
report of classifiers, the ensemble table; for runs on 2D images the OOF scores overall and per
category, Dice per class and the worst and best images (see src.reporting.build)."""
from __future__ import annotations

import argparse

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.reporting.build import build_report
from src.reporting.options import ReportOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, ReportOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    report = build_report(from_args(ReportOptions, build_parser().parse_args(argv)))
    print(f"wrote {report.index} ({len(report.figures)} figures)")
    return 0


if __name__ == "__main__":
    run_cli(main)
