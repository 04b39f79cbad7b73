"""Benchmark archs: `python -m src.benchmark models --archs unet_classic unet_classic_dilated4 unet_r18`.

Per arch, in a fresh process each: parameters, GMACs per image, train step time, inference time per
image, data-loading time per batch, peak memory (CUDA max allocated; peak RSS growth on CPU), medians
over --repeats; with --train-epochs N also the validation score and Dice of a training on --fold.
A configuration that runs out of memory (on CPU: past --memory-limit MB) is an OOM row and the run
goes on. Writes <out>/benchmark.csv and benchmark.md and prints the table.
"""
from __future__ import annotations

import argparse
import sys

from src.core.errors import run_cli
from src.research.benchmark import BenchmarkOptions, run_benchmark
from src.research.evaluation import markdown


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="benchmark segmentation archs")
    models.add_argument("--archs", nargs="+", required=True, help="registered arch names")
    models.add_argument("--img-size", type=int, default=256)
    models.add_argument("--batch-size", type=int, default=8)
    models.add_argument("--channels", type=int, default=3, help="2.5D input channels")
    models.add_argument("--device", default="cpu", help="cpu | cuda")
    models.add_argument("--repeats", type=int, default=5, help="timed batches / steps per measurement (median)")
    models.add_argument("--train-epochs", type=int, default=0, help="also train each arch this long on --fold and score it")
    models.add_argument("--fold", default="0")
    models.add_argument("--data-dir", default="data/synthetic")
    models.add_argument("--cache-dir", default="", help="default: cache/<data folder name>")
    models.add_argument("--folds-csv", default="folds/folds.csv")
    models.add_argument("--memory-limit", type=float, default=0.0, metavar="MB",
                        help="mark an arch OOM when its peak memory passes this (CPU: RSS growth); 0 = none")
    models.add_argument("--workers", type=int, default=0, help="data loader processes")
    models.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    models.add_argument("--out", default="reports/benchmark")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    opts = BenchmarkOptions(
        archs=tuple(args.archs), img_size=args.img_size, batch_size=args.batch_size, channels=args.channels,
        device=args.device, repeats=args.repeats, train_epochs=args.train_epochs, fold=args.fold,
        data_dir=args.data_dir, cache_dir=args.cache_dir, folds_csv=args.folds_csv, memory_limit_mb=args.memory_limit,
        workers=args.workers, threads=args.threads, out=args.out)
    table = run_benchmark(opts)
    print(markdown(table), end="")
    print(f"wrote {opts.out}/benchmark.csv and benchmark.md")
    return 0


if __name__ == "__main__":
    run_cli(main)
