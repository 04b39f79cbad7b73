"""Train one model on one fold: `python -m src.train --fold 0 --arch unetpp_effb4`.

`--stage` picks what is trained (seg2d: 2.5D segmenter, the default); its config dataclass
defines the other flags. `--list-archs` prints the registered architectures with parameter
counts. Under `torchrun --nproc_per_node N -m src.train ...` it trains with DDP.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from src.core.errors import DataError, run_cli
from src.engine.config import add_config_arguments, config_from_args


# Each stage module exposes CONFIG (its config dataclass) and run(cfg, resume) -> best score.
STAGES: dict[str, str] = {"seg2d": "src.engine.seg_task", "seg3d": "src.engine.seg3d_task", "cls": "src.engine.cls_task", "det": "src.engine.detector"}


def stage_module(stage: str):
    if stage not in STAGES:
        raise DataError(f"--stage {stage!r}: valid stages are {', '.join(STAGES)}")
    return importlib.import_module(STAGES[stage])


def _build_for_count(name: str):
    """Build on the meta device (no memory, no init cost) where the arch allows it."""
    import torch

    from src.models.registry import create_model

    try:
        with torch.device("meta"):
            return create_model(name)
    except RuntimeError:  # some builders read tensor values while constructing
        return create_model(name)


def list_archs_table(stage: str | None = None) -> str:
    from src.models.registry import count_parameters, list_archs

    lines = [f"{'arch':<22} {'stage':<6} {'params':>10}  description"]
    for spec in list_archs(stage=stage):
        params = count_parameters(_build_for_count(spec.name))
        lines.append(f"{spec.name:<22} {spec.stage:<6} {params / 1e6:>9.2f}M  {spec.description}")
    return "\n".join(lines)


def build_parser(stage: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list-archs", action="store_true", help="print the registered archs and exit")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last.pt")
    add_config_arguments(parser, stage_module(stage).CONFIG)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage")
    chosen = pre.parse_known_args(argv)[0].stage
    stage = chosen or "seg2d"
    module = stage_module(stage)
    args = build_parser(stage).parse_args(argv)
    if args.list_archs:
        print(list_archs_table(chosen))
        return 0
    cfg = config_from_args(module.CONFIG, args)
    from src.models.registry import get_arch

    try:
        get_arch(cfg.arch)
    except KeyError as exc:
        raise DataError(f"--arch: {exc.args[0]}") from None
    score = module.run(cfg, args.resume)
    print(f"{cfg.run_name} fold {cfg.fold}: best validation score {score:.4f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
