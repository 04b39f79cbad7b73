"""Presence report of a slice-classifier run: `python -m src.cls_report --run runs/NAME [--fold K] --out DIR`.

Writes DIR/cls_report.csv (per class: slices, positives, average precision, precision / recall /
F1 / true-negative rate at --threshold, the best F1 and its threshold) and DIR/cls_pr_curve.png
(see src.reporting.presence).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.core.errors import run_cli
from src.reporting.presence import presence_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.cls_report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path, help="classifier run folder, e.g. runs/cls_effb4")
    parser.add_argument("--fold", default=None, help="one fold's OOF only (default: every fold)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache with the truth masks (default: the run's)")
    parser.add_argument("--threshold", type=float, default=0.5, help="presence probability of the table (default 0.5)")
    args = parser.parse_args(argv)
    table = presence_report(args.run, args.out, args.fold, args.cache_dir, args.threshold)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    run_cli(main)
