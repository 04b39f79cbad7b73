"""Offline Kaggle kernel bundle: `python -m src.kernel build --ensemble ensemble.json --out kernels/build/NAME`.

The bundle is a folder to upload as a Kaggle dataset: the code, every run the ensemble needs (each
fold's config and weights), the ensemble file, the wheels Kaggle's image lacks and inference.py,
which installs them with --no-index and runs src.submit (see src.kaggle.bundle).
"""
from __future__ import annotations

import argparse

from src.core.errors import run_cli
from src.kaggle.bundle import KAGGLE_MISSING, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.kernel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the offline bundle")
    b.add_argument("--ensemble", required=True, help="ensemble.json from python -m src.ensemble tune")
    b.add_argument("--out", required=True, help="bundle folder, e.g. kernels/build/NAME")
    b.add_argument("--wheels", default=",".join(KAGGLE_MISSING),
                   help="comma-separated packages to bundle as wheels ('' for none); default: what Kaggle lacks")
    b.add_argument("--title", default="GI tract segmentation inference")
    args = parser.parse_args(argv)
    out = build(args.ensemble, args.out, tuple(w for w in args.wheels.split(",") if w), args.title)
    print(f"kernel bundle: {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    run_cli(main)
