"""Write the synthetic dataset in the Kaggle layout: `python -m src.make_synthetic --out data/synthetic`."""
from __future__ import annotations

import argparse
import time

from src.core.errors import run_cli
from src.data.synthetic import generate, parse_sizes, parse_slices


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m src.make_synthetic", description=__doc__)
    p.add_argument("--out", required=True, help="dataset folder to create (train/, test/, train.csv, sample_submission.csv)")
    p.add_argument("--cases", type=int, default=12, help="number of train cases (each with 1-5 days)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-cases", type=int, default=0,
                   help="cases in test/: half of them (rounded down) are train cases on a later day, the rest unseen")
    p.add_argument("--truth-out", help="test truth CSV (default: <out>_test_truth.csv beside the folder)")
    p.add_argument("--sizes", type=parse_sizes, help="image sizes WxH, comma separated (default: the four real sizes)")
    p.add_argument("--slices", type=parse_slices, help="slice counts, the first the majority (default: 144,80)")
    p.add_argument("--ambiguous-tail", type=int, default=0,
                   help="train labels of every case-day stop this many slices before the organs end")
    p.add_argument("--bad-case-day", action="append", default=[],
                   help="case-day id(s) with badly wrong train labels, e.g. case7_day0 (repeatable, comma lists)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (the output does not depend on it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bad = [b for item in args.bad_case_day for b in item.split(",") if b.strip()]
    start = time.perf_counter()
    s = generate(args.out, cases=args.cases, seed=args.seed, test_cases=args.test_cases, truth_out=args.truth_out,
                 sizes=args.sizes, slices=args.slices, ambiguous_tail=args.ambiguous_tail, bad_case_days=bad,
                 workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {s.out_dir}: train {s.train_cases} cases, {s.train_case_days} case-days, {s.train_slices} slices "
          f"({s.empty_fraction:.1%} of rows empty); test {s.test_cases} cases, {s.test_case_days} case-days, "
          f"{s.test_slices} slices; truth {s.truth_path}; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
