"""Write a synthetic dataset in a real layout: `python -m src.make_synthetic --out data/synthetic` (the GI tract
Kaggle layout), or `--format carvana|ebhi|nnunet` for a 2D one. An option of another format is an error."""
from __future__ import annotations

import argparse
import time

from src.core.errors import run_cli
from src.data.synthetic import parse_size, parse_sizes, parse_slices
from src.data.synthetic2d import GENERATORS, generate_dataset


def _case_days(text: str) -> list[str]:
    return [b for b in text.split(",") if b.strip()]


def build_parser() -> argparse.ArgumentParser:
    """Every format's flags; those not given stay None and are not passed on, so each generator's
    defaults hold."""
    p = argparse.ArgumentParser(prog="python -m src.make_synthetic", description=__doc__)
    p.add_argument("--format", choices=list(GENERATORS), default="gi",
                   help="layout: gi (UW-Madison GI tract, default), carvana, ebhi (EBHI-Seg), nnunet (nnU-Net v2 raw, 2D)")
    p.add_argument("--out", required=True,
                   help="dataset folder to create (gi: train/, test/, train.csv, sample_submission.csv; carvana: train/, "
                        "train_masks/, test/ and CSVs; ebhi: <category>/image|label/; nnunet: e.g. Dataset501_Synthetic)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--truth-out", help="test truth, outside --out (gi, carvana: a CSV, default <out>_test_truth.csv; "
                                       "nnunet: a folder of label PNGs, default <out>_test_truth)")
    p.add_argument("--cases", type=int, help="train cases: gi (default 12, each with 1-5 days), nnunet (default 20)")
    p.add_argument("--test-cases", type=int,
                   help="gi: cases in test/, half of them (rounded down) train cases on a later day, the rest unseen "
                        "(default 0); nnunet: cases in imagesTs/ (default 4)")
    gi = p.add_argument_group("gi only")
    gi.add_argument("--sizes", type=parse_sizes, help="image sizes WxH, comma separated (default: the four real sizes)")
    gi.add_argument("--slices", type=parse_slices, help="slice counts, the first the majority (default: 144,80)")
    gi.add_argument("--ambiguous-tail", type=int,
                    help="train labels of every case-day stop this many slices before the organs end (default 0)")
    gi.add_argument("--bad-case-day", "--bad-case-days", dest="bad_case_days", type=_case_days, action="extend",
                    help="case-day id(s) with badly wrong train labels, e.g. case7_day0 (repeatable, comma lists)")
    gi.add_argument("--workers", type=int, help="worker processes (default 2; the output does not depend on it)")
    two_d = p.add_argument_group("2D formats")
    two_d.add_argument("--size", type=parse_size,
                       help="image size WxH (carvana: default 240x160, the real 1918x1280 is 3:2; ebhi: default 224x224; "
                            "nnunet: default 128x128)")
    two_d.add_argument("--cars", type=int, help="carvana: train cars (default 6)")
    two_d.add_argument("--test-cars", type=int, help="carvana: test cars, other than the train ones (default 2)")
    two_d.add_argument("--views", type=int, help="carvana: views per car, NN = 01.. (default 16)")
    two_d.add_argument("--images", type=int, help="ebhi: images over the six categories, in the real proportions (default 60)")
    two_d.add_argument("--unlabelled", type=int, help="ebhi: images without a label file (default 1)")
    two_d.add_argument("--channels", type=int, help="nnunet: gray channels per case, one PNG each (default 2, at most 4)")
    two_d.add_argument("--classes", type=int, help="nnunet: foreground classes of the index map (default 2, at most 4)")
    return p


def main(argv: list[str] | None = None) -> int:
    options = vars(build_parser().parse_args(argv))
    fmt, out = options.pop("format"), options.pop("out")
    start = time.perf_counter()
    summary = generate_dataset(fmt, out, **{k: v for k, v in options.items() if v is not None})
    print(f"{summary.line()}; {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    run_cli(main)
