"""Run a recipe end to end: `python -m src.pipeline recipes/demo`.

A recipe (TOML, under recipes/) names the data, the folds, the models (stage, arch, options,
folds), the ensemble and the outputs; it is checked against its schema before any step runs
(src.orchestration.schema). The pipeline turns it into steps, each a stage command with
its arguments, and runs them in order. A step is skipped when its outputs exist and its stamp
(the hash of its command and of its inputs' sizes and times) matches the last completed run, so a
re-run after an interruption continues where it stopped; an interrupted training step resumes
from its last.pt. The cache step runs every time: prepare itself skips the case-days that are up to
date and rewrites the ones whose arrays no longer match their fingerprints.

Steps: synthetic data (when the recipe asks for it and it is missing), folds, cache, one training
per model and fold; then, with an [ensemble] section: ensemble tuning on OOF (src.ensemble),
the test submission (src.submit), its score when the test truth is known (the synthetic data's
<dir>_test_truth.csv, or [submit] truth), the HTML report (src.report). Recipes named by
`compare` run first on the same data; their headline numbers are printed beside this recipe's.
"""
from __future__ import annotations

import argparse

from src.core.errors import run_cli
from src.core.options import add_arguments, from_args
from src.orchestration.recipes import PipelineOptions, run_pipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, PipelineOptions)
    return parser


def main(argv: list[str] | None = None) -> int:
    run_pipeline(from_args(PipelineOptions, build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    run_cli(main)
