"""Ablations over repeated splits:
`python -m src.ablate --base "--arch unet_classic_tiny --img-size 64 --epochs 2" --vary lr=1e-3,1e-2 --repeats 3`.

Trains the base and every one-flag variant (`--vary flag=v1,v2`, repeatable; values holding commas
are separated by `;`) on the same --repeats seeded splits, through python -m src.train (the data's cache is prepared
first when missing), scores each from its OOF predictions, and writes <out>/ablation.csv, ablation.md, ablation.png and cells.csv, with each
variant's paired difference from the base and its confidence interval. A re-run skips the finished
cells. `--split MODE[:TRAIN]`: MODE random or grouped, TRAIN the training fraction (`random:0.8` is an
80/20 split; without it, 1 - --val-fraction).

GI volumes: `random` splits case-days, `grouped` whole cases; scores are the competition score and
per-class Dice, Jaccard, precision, recall, accuracy (mean and std).

2D images (Carvana, EBHI-Seg, nnU-Net 2D; told from the prepared cache): `random` splits images (groups
ignored, as the EBHI-Seg study's image-level splits did), `grouped` whole groups (Carvana cars). Each
cell is scored per image (Dice, Jaccard, precision, recall at the run's --threshold), overall and per
category; the report has mean and sd per variant and category, the paired differences of overall
Jaccard and Dice, and Jaccard bars per category. The EBHI-Seg protocol:
`python -m src.ablate --base "--data-dir data/ebhi --arch unet_tiny --epochs 2 --img-size 64" --vary lr=1e-3,3e-3 --split random:0.8 --repeats 3 --out reports/ebhi_ablation`

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
