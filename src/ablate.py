"""Ablations over repeated splits:
`python -m src.ablate --base "--arch unet_classic_tiny --img-size 64 --epochs 2" --vary lr=1e-3,1e-2 --repeats 3`.

Trains the base and every one-flag variant (`--vary flag=v1,v2`, repeatable; values holding commas
are separated by `;`) on the same --repeats seeded splits (`--split random`: case-days, `grouped`: whole
cases; --val-fraction validated), through python -m src.train, scores each from its OOF predictions,
and writes <out>/ablation.csv, ablation.md, ablation.png (mean and std of the competition score and
of per-class Dice, Jaccard, precision, recall, accuracy) and cells.csv, with each variant's paired
difference from the base and its confidence interval. A re-run skips the finished cells.
`--executor ray [--address auto|HOST:PORT]` trains the cells as Ray tasks, several at once (docs/distributed.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.research.ablation import AblationOptions, run_ablation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, AblationOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = from_args(AblationOptions, build_parser().parse_args(argv))
    run_ablation(opts)
    print((Path(opts.out) / "ablation.md").read_text(), end="")
    print(f"wrote {opts.out}/ablation.csv, ablation.md, ablation.png and cells.csv")
    return 0


if __name__ == "__main__":
    run_cli(main)
