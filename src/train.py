"""Train one model on one fold: `python -m src.train --fold 0 --arch unetpp_effb4`.

`--stage` picks what is trained (seg2d: 2.5D segmenter, the default; seg3d, cls, det); its config
dataclass (src.engine.config) defines the other flags. `--list-archs` prints the registered
architectures with parameter counts. Under `torchrun --nproc_per_node N -m src.train ...` it
trains with DDP.
"""
from __future__ import annotations

import argparse
import sys

from src.core.errors import run_cli
from src.engine.config import add_config_arguments, config_from_args
from src.engine.run import train
from src.engine.stages import get_stage, stage_names


def build_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-archs", action="store_true", help="print the registered archs and exit")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its saved training state")
    add_config_arguments(parser, get_stage(stage).config)
    return parser


def chosen_stage(argv: list[str]) -> str | None:
    """The --stage given on the command line (it decides which flags exist), if any."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage", choices=stage_names())
    return pre.parse_known_args(argv)[0].stage


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = chosen_stage(argv)
    stage = chosen or "seg2d"
    args = build_parser(stage).parse_args(argv)
    if args.list_archs:
        from src.models.registry import list_archs_table

        print(list_archs_table(chosen))
        return 0
    cfg = config_from_args(get_stage(stage).config, args)
    score = train(cfg, args.resume)
    print(f"{cfg.run_name} fold {cfg.fold}: best validation score {score:.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
