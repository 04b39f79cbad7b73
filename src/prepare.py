"""Stage `prepare`: `python -m src.prepare --data-dir DIR` reads the Kaggle layout once into
memory-mappable case-day volumes (see src.data.preparation)."""
from __future__ import annotations

import argparse
from pathlib import Path

from src.core.errors import run_cli
from src.data.layout import MAX_IMAGE_PIXELS
from src.data.preparation import SPLITS, prepare


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.prepare", description=__doc__)
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset root (train/, train.csv, test/)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="cache root (default: cache/<data folder name>)")
    parser.add_argument("--split", choices=[*SPLITS, "all"], default="train", help="which split to cache")
    parser.add_argument("--workers", type=int, default=2, help="case-days read in parallel (default 2)")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                        help=f"refuse a slice of more pixels, from its name and PNG header before decoding "
                             f"(default {MAX_IMAGE_PIXELS} = 4096 x 4096)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(prepare(args.data_dir, args.cache_dir, args.split, args.workers, args.max_image_pixels).line())
    return 0


if __name__ == "__main__":
    run_cli(main)
