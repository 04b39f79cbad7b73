"""Ablations over repeated splits:
`python -m src.ablate --base "--arch unet_classic_tiny --img-size 64 --epochs 2" --vary lr=1e-3,1e-2 --repeats 3`.

Trains the base and every one-flag variant (`--vary flag=v1,v2`, repeatable; values holding commas
are separated by `;`) on the same --repeats seeded splits (`--split random`: case-days, `grouped`: whole
cases; --val-fraction validated), through python -m src.train, scores each from its OOF predictions,
and writes <out>/ablation.csv, ablation.md, ablation.png (mean and std of the competition score and
of per-class Dice, Jaccard, precision, recall, accuracy) and cells.csv, with each variant's paired
difference from the base and its confidence interval. A re-run skips the finished cells.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from src.core.errors import DataError, run_cli
from src.research.ablation import AblationOptions, parse_vary, run_ablation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help='train arguments of the base, one string: "--arch A --epochs 2"')
    parser.add_argument("--vary", action="append", default=[], metavar="FLAG=V1,V2", help="a train flag and its values")
    parser.add_argument("--repeats", type=int, default=3, help="seeded splits per variant")
    parser.add_argument("--split", default="random", help="random (case-days) | grouped (by case)")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0, help="split r is drawn with seed + r")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the paired intervals")
    parser.add_argument("--out", default="reports/ablation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        base = tuple(shlex.split(args.base))
    except ValueError as exc:
        raise DataError(f"--base: {exc}") from None
    opts = AblationOptions(base=base, vary=tuple(parse_vary(v) for v in args.vary), repeats=args.repeats,
                           split=args.split, val_fraction=args.val_fraction, seed=args.seed,
                           confidence=args.confidence, out=args.out)
    run_ablation(opts)
    print((Path(opts.out) / "ablation.md").read_text(), end="")
    print(f"wrote {opts.out}/ablation.csv, ablation.md, ablation.png and cells.csv")
    return 0


if __name__ == "__main__":
    run_cli(main)
