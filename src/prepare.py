"""Stage `prepare`: `python -m src.prepare --data-dir DIR` detects the data's layout (GI tract, Carvana,
EBHI-Seg, nnU-Net), writes the dataset description into the cache and reads the data once into
memory-mappable entries (see src.data.preparation)."""
from __future__ import annotations

import argparse

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.data.preparation import PrepareOptions, prepare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.prepare", description=__doc__)
    add_arguments(parser, PrepareOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = from_args(PrepareOptions, build_parser().parse_args(argv))
    print(prepare(opts.data_dir, opts.cache_dir, opts.split, opts.workers, opts.max_image_pixels, opts.format).line())
    return 0


if __name__ == "__main__":
    run_cli(main)
