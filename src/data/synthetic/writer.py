"""The synthetic dataset on disk: `generate` writes the Kaggle layout (PNG slices, train.csv,
sample_submission.csv) into a folder it installs atomically, and the test truth beside it.

Every case-day is rendered from generators seeded by (seed, case, day), so the bytes do not depend
on the worker count. The test truth is always clean, whatever label faults the train split has.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from src.core.atomic import atomic_dir, atomic_path
from src.core.errors import DataError
from src.core.outputs import TRUTH_ENDINGS, new_dataset_paths
from src.data import rle
from src.data.layout import CLASSES, slice_id
from src.data.synthetic.faults import cut_tail, spoil
from src.data.synthetic.planning import REAL_SLICES, CaseDaySpec, image_sizes, plan
from src.data.synthetic.renderer import render
from src.data.synthetic.values import parse_case_day

PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP)  # 2x faster than the default, files as small
INLINE_VOXELS = 20_000_000  # smaller datasets are rendered in-process: starting workers costs more


@dataclass(frozen=True)
class SyntheticSummary:
    """What `generate` wrote."""

    out_dir: str
    truth_path: str | None
    train_cases: int
    train_case_days: int
    train_slices: int
    test_cases: int
    test_case_days: int
    test_slices: int
    empty_fraction: float  # of the train.csv rows
    bad_case_days: tuple[str, ...]

    def line(self) -> str:
        """One line for the command's output."""
        return (f"wrote {self.out_dir}: train {self.train_cases} cases, {self.train_case_days} case-days, "
                f"{self.train_slices} slices ({self.empty_fraction:.1%} of rows empty); test {self.test_cases} cases, "
                f"{self.test_case_days} case-days, {self.test_slices} slices; truth {self.truth_path}")


def slice_name(spec: CaseDaySpec, k: int) -> str:
    """File name of slice k (0-based) of a case-day: width first, spacing with 2 decimals."""
    return f"slice_{k + 1:04d}_{spec.width}_{spec.height}_{spec.spacing:.2f}_{spec.spacing:.2f}.png"


def write_case_day(spec: CaseDaySpec, seed: int, root: str | Path) -> list[tuple[str, str, str]]:
    """Render one case-day, write its PNGs under `root`, return its label rows (id, class, rle)."""
    image, masks = render(spec, seed)
    if spec.tail:
        masks = cut_tail(masks, spec.tail)
    if spec.bad:
        masks = spoil(masks, np.random.default_rng([seed, spec.case, spec.day, 17]))
    folder = Path(root) / spec.split / f"case{spec.case}" / spec.case_day / "scans"
    folder.mkdir(parents=True)
    rows = []
    for k in range(spec.slices):
        path = folder / slice_name(spec, k)
        if not cv2.imwrite(str(path), image[k], PNG_PARAMS):
            raise DataError(f"{path}: could not write the PNG")
        sid = slice_id(spec.case_day, k + 1)
        rows.extend((sid, cls, rle.encode(masks[k, c])) for c, cls in enumerate(CLASSES))
    return rows


def _write_job(job: tuple[CaseDaySpec, int, str]) -> list[tuple[str, str, str]]:
    return write_case_day(*job)


def _single_thread_cv2() -> None:
    cv2.setNumThreads(1)


def _write_all(specs: list[CaseDaySpec], seed: int, root: Path, workers: int) -> list[list[tuple[str, str, str]]]:
    """Write every case-day (in worker processes if asked); results in the order of `specs`."""
    jobs = [(spec, seed, str(root)) for spec in specs]
    if workers <= 1 or sum(s.slices * s.height * s.width for s in specs) < INLINE_VOXELS:
        return [_write_job(job) for job in jobs]
    # spawn, not fork: a fork of a process that already runs threads (torch, tqdm, a test runner)
    # can inherit a held lock and hang.
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_thread_cv2) as pool:
        return list(pool.map(_write_job, jobs))


def write_csv(path: Path, rows: list[tuple], columns: list[str]) -> None:
    """Rows under a header, no index column."""
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def _check_args(cases: int, test_cases: int, slices: list[int], ambiguous_tail: int, workers: int) -> None:
    if cases < 1 or test_cases < 0:
        raise DataError(f"need at least 1 train case and no negative test cases (got {cases}, {test_cases})")
    if not slices or min(slices) < 8:
        raise DataError(f"slice counts must be at least 8 (got {slices})")
    if ambiguous_tail < 0 or workers < 1:
        raise DataError(f"ambiguous tail must be >= 0 and workers >= 1 (got {ambiguous_tail}, {workers})")


def generate(out_dir: str | Path, cases: int = 12, seed: int = 0, test_cases: int = 0,
             truth_out: str | Path | None = None, sizes=None, slices=None, ambiguous_tail: int = 0,
             bad_case_days=(), workers: int = 2, overwrite: bool = False) -> SyntheticSummary:
    """Write a synthetic dataset in the Kaggle layout under `out_dir` (atomically) and its test truth.

    `sizes`: (W, H) pairs (default: the four real sizes); `slices`: slice counts, the first the
    majority (default 144, 80); `bad_case_days`: ids like "case7_day0" whose train labels are spoilt.
    The test truth (id, class, segmentation) goes to `truth_out`, default `<out_dir>_test_truth.csv`.
    """
    slices = list(REAL_SLICES if slices is None else (int(s) for s in slices))
    _check_args(cases, test_cases, slices, ambiguous_tail, workers)
    size_list = image_sizes(sizes)
    bad = tuple(sorted({parse_case_day(b) for b in bad_case_days}))
    out, truth = new_dataset_paths(out_dir, truth_out, TRUTH_ENDINGS["gi"], overwrite)
    specs = plan(cases, seed, test_cases, size_list, slices, ambiguous_tail, bad)
    with atomic_dir(out) as tmp:
        rows = _write_all(specs, seed, tmp, workers)
        train_rows = [r for spec, rs in zip(specs, rows) if spec.split == "train" for r in rs]
        test_rows = [r for spec, rs in zip(specs, rows) if spec.split == "test" for r in rs]
        (tmp / "test").mkdir(exist_ok=True)
        write_csv(tmp / "train.csv", train_rows, ["id", "class", "segmentation"])
        write_csv(tmp / "sample_submission.csv", [(i, c, "") for i, c, _ in test_rows], ["id", "class", "predicted"])
        if test_rows:
            with atomic_path(truth, suffix=".csv") as tmp_truth:
                write_csv(tmp_truth, test_rows, ["id", "class", "segmentation"])
    return _summary(out, truth if test_rows else None, specs, train_rows, bad)


def _summary(out: Path, truth: Path | None, specs: list[CaseDaySpec], train_rows, bad) -> SyntheticSummary:
    train = [s for s in specs if s.split == "train"]
    test = [s for s in specs if s.split == "test"]
    empty = sum(1 for r in train_rows if not r[2]) / max(len(train_rows), 1)
    return SyntheticSummary(str(out), str(truth) if truth else None,
                            len({s.case for s in train}), len(train), sum(s.slices for s in train),
                            len({s.case for s in test}), len(test), sum(s.slices for s in test),
                            round(empty, 4), tuple(f"case{c}_day{d}" for c, d in bad))
