"""Scoring of a submission CSV against a truth CSV with the competition metric, overall and per case-day.

The images give each case-day's slice order and (H, W). Every case-day of the truth is scored; a
submission row missing for one of its (id, class) pairs counts as an empty mask, a submission id
without an image is an error, and submission rows for other images are ignored.

`--protocol mlebench` reproduces mle-bench's grader for this competition
(mlebench/competitions/uw-madison-gi-tract-image-segmentation/grade.py and
mlebench/competitions/utils.py rle_decode), whose behaviours mirrored here are: both files decoded
column-major (pixel k of an (H, W) mask at row k % H, column k // H); slices stacked in id order
(zero-padded slice numbers, so slice order); coordinates divided by the truth volume's shape; Dice
per row with both-empty rows skipped; the 10x-oversize Hausdorff rule (in `src.metrics.competition`). Where it
differs: mle-bench pairs submission and answer rows by position (so needs the answers' row order)
while this pairs them by id; it silently clips a run past the image while this rejects it; and an
all-empty set gives it NaN while this applies `src.metrics.competition`'s empty-set convention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from src.core.errors import DataError
from src.data.layout import (
    MAX_IMAGE_PIXELS,
    check_labels_match_images,
    masks_for_case_day,
    max_image_pixels_field,
    parse_id,
    read_labels,
    scan_split,
)
from src.metrics.competition import PROTOCOLS, MetricResult, check_protocol, score_volumes

SPLITS = ("test", "train")


@dataclass(frozen=True)
class ScoreOptions:
    """What `python -m src.score` was asked."""

    data_dir: Path = field(metadata={"help": "dataset root in the Kaggle layout"})
    truth: Path = field(metadata={"help": "truth CSV (segmentation or predicted column)"})
    pred: Path = field(metadata={"help": "submission CSV (predicted column)"})
    split: str | None = field(default=None, metadata={
        "choices": SPLITS, "help": "image split (default: the one holding the truth's ids)"})
    protocol: str = field(default="kaggle", metadata={"choices": PROTOCOLS})
    per_case_day: Path | None = field(default=None, metadata={
        "metavar": "OUT.csv", "help": "write the per-case-day table here"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of a table"})
    summary: Path | None = field(default=None, metadata={"metavar": "OUT.json", "help": "also write the JSON object here"})
    max_image_pixels: int = max_image_pixels_field()


def _find_split(data_dir: Path, truth_ids: set[str], truth_csv: Path, max_pixels: int) -> tuple[str, pd.DataFrame]:
    """The split whose images include every truth id, with its index."""
    for split in SPLITS:
        index = scan_split(data_dir, split, max_pixels)
        if truth_ids <= set(index["id"]):
            return split, index
    example = min(truth_ids)
    raise DataError(f"{truth_csv}: ids such as {example} have no image under {data_dir}/test nor {data_dir}/train")


def _volumes(index: pd.DataFrame, truth: pd.DataFrame, pred: pd.DataFrame, truth_csv: Path,
             pred_csv: Path, order: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(case_day, pred, truth) uint8 (Z, 3, H, W) volumes, one case-day at a time."""
    truth_rle = truth.set_index(["id", "class"])["rle"]
    pred_rle = pred.set_index(["id", "class"])["rle"]
    for case_day, group in index.groupby("case_day", sort=False):
        ids, height, width = group["id"].tolist(), int(group["height"].iloc[0]), int(group["width"].iloc[0])
        yield (case_day,
               masks_for_case_day(pred_rle, ids, height, width, source=str(pred_csv), order=order),
               masks_for_case_day(truth_rle, ids, height, width, source=str(truth_csv), order=order))


def score_with_split(data_dir: Path, truth_csv: Path, pred_csv: Path, protocol: str,
                     split: str | None, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[MetricResult, str]:
    check_protocol(protocol)
    truth, pred = read_labels(truth_csv), read_labels(pred_csv)
    if truth.empty:
        raise DataError(f"{truth_csv}: no rows to score")
    if split is None:
        split, index = _find_split(data_dir, set(truth["id"]), truth_csv, max_pixels)
    else:
        index = scan_split(data_dir, split, max_pixels)
    orphans = sorted(set(pred["id"]) - set(index["id"]))
    if orphans:
        raise DataError(f"{pred_csv}: id {orphans[0]} has no image in {data_dir}/{split} ({len(orphans)} such ids)")
    scored = index[index["case_day"].isin({parse_id(sid)[0] for sid in truth["id"].unique()})]
    check_labels_match_images(truth, scored, truth_csv)
    order = "F" if protocol == "mlebench" else "C"  # mle-bench decodes RLE column-major
    return score_volumes(_volumes(scored, truth, pred, truth_csv, pred_csv, order), protocol), split


def score_submission(data_dir: str | Path, truth_csv: str | Path, pred_csv: str | Path,
                     protocol: str = "kaggle", split: str | None = None) -> MetricResult:
    """Score `pred_csv` against `truth_csv`; split None means the one holding the truth's images."""
    return score_with_split(Path(data_dir), Path(truth_csv), Path(pred_csv), protocol, split)[0]


def summary_record(result: MetricResult, protocol: str, split: str) -> dict:
    return {"score": result.score, "dice": result.dice, "hausdorff": result.hausdorff,
            "n_case_days": len(result.per_case_day),
            "n_rows_scored": int(result.per_case_day["n_rows_scored"].sum()),
            "protocol": protocol, "split": split}
