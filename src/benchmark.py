"""Benchmark archs: `python -m src.benchmark models --archs unet_classic unet_classic_dilated4 unet_r18`.

Per arch, in a fresh process each: parameters, GMACs per image, train step time, inference time per
image, data-loading time per batch, peak memory (CUDA max allocated; peak RSS growth on CPU), medians
over --repeats; with --train-epochs N also the validation score and Dice of a training on --fold.
A configuration that runs out of memory (on CPU: past --memory-limit MB) is an OOM row and the run
goes on. Writes <out>/benchmark.csv and benchmark.md and prints the table.
On 2D images (told from the prepared cache) the model has the data's channels and classes, data_ms
times the 2D ImageDataset and the score is the mean per-image Dice (src.research.benchmark).
"""
from __future__ import annotations

import argparse
import sys

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.research.benchmark import BenchmarkOptions, run_benchmark
from src.research.evaluation import markdown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("models", help="benchmark segmentation archs"), BenchmarkOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    opts = from_args(BenchmarkOptions, args)
    table = run_benchmark(opts)
    print(markdown(table), end="")
    print(f"wrote {opts.out}/benchmark.csv and benchmark.md")
    return 0


if __name__ == "__main__":
    run_cli(main)
