"""Pruning sensitivity: `python -m src.prune --run runs/NAME --method l1_unstructured --amounts 0.25,0.5,0.75 [--per-module]`.

Prunes a copy of the run's trained model (the run is never written to) with torch.nn.utils.prune,
per convolution block (--per-module) or the whole net, scores it on the fold's validation case-days
with the competition metric and per-class Dice, and writes <out>/prune.csv, prune.md and
prune_heatmap.png (the drop, module x amount, per class). --remove makes the pruning permanent
and reports the pruned checkpoint's size.
On a run trained on 2D images the score is the mean per-image Dice at the run's threshold, with
Jaccard and per-label Dice (src.research.pruning).
"""
from __future__ import annotations

import argparse
import sys

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.research.evaluation import markdown
from src.research.pruning import PruneOptions, run_pruning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.prune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, PruneOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = from_args(PruneOptions, build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    table = run_pruning(opts)
    print(markdown(table[["module", "amount", "sparsity", "score", "drop_score"]]), end="")
    print(f"wrote {opts.out_dir}/prune.csv, prune.md and prune_heatmap.png")
    return 0


if __name__ == "__main__":
    run_cli(main)
