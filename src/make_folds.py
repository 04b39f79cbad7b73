"""Stage `make_folds`: `python -m src.make_folds --data-dir DIR` writes folds/folds.csv: GI case-days
grouped by case, or a 2D dataset's images grouped and stratified as its description says (see
src.data.folds)."""
from __future__ import annotations

import argparse
from pathlib import Path

from src.core.atomic import check_writable, write_text_atomic
from src.core.errors import run_cli
from src.core.outputs import check_output
from src.data.folds import fold_table, make_folds
from src.data.formats import FORMAT_MODULES
from src.data.layout import MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_HELP


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.make_folds", description=__doc__)
    parser.add_argument("--data-dir", required=True, type=Path, help="dataset root, in one of the known layouts")
    parser.add_argument("--format", choices=FORMAT_MODULES, help="the data's layout (default: detected from the files)")
    parser.add_argument("--n-folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=42, help="shuffle seed (default 42)")
    parser.add_argument("--exclude", default="",
                        help="comma-separated case-days (GI) or image ids (2D) to leave out, e.g. case7_day0,case81_day30")
    parser.add_argument("--out", type=Path, default=Path("folds/folds.csv"), help="output CSV (default folds/folds.csv)")
    parser.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS, help=MAX_IMAGE_PIXELS_HELP)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_output(args.out, "--out", data_dir=args.data_dir)
    check_writable(args.out)
    exclude = [name.strip() for name in args.exclude.split(",") if name.strip()]
    folds = make_folds(args.data_dir, args.n_folds, args.seed, exclude, args.format, args.max_image_pixels)
    write_text_atomic(args.out, folds.to_csv(index=False))
    unit = "image" if "id" in folds.columns else "case-day"
    if exclude:
        print(f"make_folds: left out {len(exclude)} {unit}(s): {', '.join(sorted(exclude))}")
    print(fold_table(folds).to_string(index=False))
    print(f"make_folds: {len(folds)} {unit}s in {args.n_folds} folds -> {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
