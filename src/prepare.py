"""Stage `prepare`: `python -m src.prepare --data-dir DIR` reads the Kaggle layout once into
memory-mappable case-day volumes (see src.data.preparation)."""
from __future__ import annotations

import argparse
from pathlib import Path

from src.core.errors import run_cli
from src.data.preparation import SPLITS, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.prepare", description=__doc__)
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset root (train/, train.csv, test/)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: cache/<data folder name>)")
    parser.add_argument("--split", choices=[*SPLITS, "all"], default="train", help="which split to cache")
    parser.add_argument("--workers", type=int, default=2, help="case-days read in parallel (default 2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(prepare(args.data_dir, args.cache_dir, args.split, args.workers).line())
    return 0


if __name__ == "__main__":
    run_cli(main)
