"""Offline Kaggle kernel bundle: `python -m src.kernel build --ensemble ensemble.json --out kernels/build/NAME`.

The bundle is a folder to upload as a Kaggle dataset: the code, every run the ensemble needs (each
complete fold's config and weights), the ensemble file, the wheels Kaggle's image lacks (pinned in
kernel-requirements.txt), manifest.json (every file's sha256, the package versions, the size) and
inference.py, which verifies that the bundle holds exactly the manifest's files with their checksums
(before importing anything from it), installs the wheels with --no-index and runs src.submit (see
src.kaggle.bundle). `python -m src.kernel pins` prints the closure kernel-requirements.txt
must pin, computed from the installed packages (src.kaggle.image).
"""
from __future__ import annotations

import argparse

from src.core.errors import run_cli
from src.kaggle.bundle import build, read_manifest
from src.kaggle.image import format_pins, kernel_closure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.kernel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the offline bundle")
    b.add_argument("--ensemble", required=True, help="ensemble.json from python -m src.ensemble tune")
    b.add_argument("--out", required=True, help="bundle folder, e.g. kernels/build/NAME")
    b.add_argument("--wheels", default=None,
                   help="comma-separated packages to bundle as wheels ('' for none); "
                        "default: every package kernel-requirements.txt pins")
    b.add_argument("--allow-incomplete", action="store_true",
                   help="bundle folds without their done marker (interrupted trainings), with a warning")
    b.add_argument("--title", default="GI tract segmentation inference")
    sub.add_parser("pins", help="print what kernel-requirements.txt must pin (from the installed packages)")
    args = parser.parse_args(argv)
    if args.command == "pins":
        print(format_pins(kernel_closure()), end="")
        return 0
    wheels = None if args.wheels is None else tuple(w.strip() for w in args.wheels.split(",") if w.strip())
    out = build(args.ensemble, args.out, wheels, args.title, args.allow_incomplete)
    manifest = read_manifest(out)
    print(f"kernel bundle: {out} ({manifest['bytes'] / 1e6:.1f} MB: weights {manifest['weights_bytes'] / 1e6:.1f}, "
          f"wheels {manifest['wheels_bytes'] / 1e6:.1f}; {sum(len(r['folds']) for r in manifest['runs'])} folds "
          f"of {len(manifest['runs'])} runs, {len(manifest['packages'])} packages)")
    return 0


if __name__ == "__main__":
    run_cli(main)
