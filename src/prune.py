"""Pruning sensitivity: `python -m src.prune --run runs/NAME --method l1_unstructured --amounts 0.25,0.5,0.75 [--per-module]`.

Prunes a copy of the run's trained model (the run is never written to) with torch.nn.utils.prune,
per convolution block (--per-module) or the whole net, scores it on the fold's validation case-days
with the competition metric and per-class Dice, and writes <out>/prune.csv, prune.md and
prune_heatmap.png (the drop, module x amount, per class). --remove makes the pruning permanent
and reports the pruned checkpoint's size.
"""
from __future__ import annotations

import argparse
import sys

from src.core.errors import DataError, run_cli
from src.research.evaluation import markdown
from src.research.pruning import METHODS, PruneOptions, run_pruning


def parse_amounts(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise DataError(f"--amounts: expected comma-separated fractions like 0.25,0.5,0.75, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.prune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="runs/NAME")
    parser.add_argument("--method", default="l1_unstructured", help=" | ".join(METHODS))
    parser.add_argument("--amounts", default="0.25,0.5,0.75")
    parser.add_argument("--per-module", action="store_true", help="prune each convolution block on its own")
    parser.add_argument("--remove", action="store_true", help="make the pruning permanent and report the checkpoint size")
    parser.add_argument("--fold", default="", help="default: the first fold with validation case-days")
    parser.add_argument("--cache-dir", default="", help="default: the run config's")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="of the random methods")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    parser.add_argument("--out", default="", help="default: reports/prune_<run name>")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    opts = PruneOptions(run=args.run, method=args.method, amounts=parse_amounts(args.amounts), per_module=args.per_module,
                        remove=args.remove, fold=args.fold, cache_dir=args.cache_dir, out=args.out,
                        batch_size=args.batch_size, seed=args.seed, threads=args.threads)
    table = run_pruning(opts)
    print(markdown(table[["module", "amount", "sparsity", "score", "drop_score"]]), end="")
    print(f"wrote {opts.out_dir}/prune.csv, prune.md and prune_heatmap.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
