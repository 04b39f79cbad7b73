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
from typing import Callable, Iterator, TypeVar

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
T = TypeVar("T")


@dataclass(frozen=True)
class ScoreOptions:
    """What `python -m src.score` was asked: the GI submission flags, and the 2D ones (src.metrics.scoring2d)."""

    data_dir: Path = field(metadata={"help": "dataset root: the GI Kaggle layout, or a 2D dataset (carvana, ebhi, nnunet)"})
    pred: Path = field(metadata={"help": "GI: submission CSV (predicted column); 2D: a Carvana CSV (img,rle_mask) "
                                         "or a folder of label images <id><ending>"})
    truth: Path | None = field(default=None, metadata={
        "help": "GI (required): truth CSV (segmentation or predicted column); 2D: a Carvana CSV or a folder of "
                "label images (default: the data folder's train labels)"})
    split: str | None = field(default=None, metadata={
        "choices": SPLITS, "help": "image split (default: the one holding the truth's ids)"})
    protocol: str = field(default="kaggle", metadata={"choices": PROTOCOLS})
    per_case_day: Path | None = field(default=None, metadata={
        "metavar": "OUT.csv", "help": "GI: write the per-case-day table here"})
    per_image: Path | None = field(default=None, metadata={
        "metavar": "OUT.csv", "help": "2D: write the per-image table (one row per image and class) here"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of a table"})
    summary: Path | None = field(default=None, metadata={"metavar": "OUT.json", "help": "also write the JSON object here"})
    max_image_pixels: int = max_image_pixels_field()

    def check_kind(self, two_d: bool) -> None:
        """DataError naming a flag given for the other kind of data (2D images or the GI slices)."""
        if not two_d and self.truth is None:
            raise DataError("--truth: required for the GI data (the truth CSV)")
        given = ((("--per-case-day", self.per_case_day), ("--protocol", self.protocol != "kaggle")) if two_d
                 else (("--per-image", self.per_image),))
        wrong = next((name for name, value in given if value), None)
        if wrong:
            raise DataError(f"{wrong}: applies to {'the GI data' if two_d else '2D data'} only, "
                            f"{self.data_dir} holds {'2D images' if two_d else 'the GI slices'}")


def find_split(truth_ids: set[str], truth_source: Path, list_split: Callable[[str], tuple[T, set[str]]],
               where: Callable[[str], str]) -> tuple[str, T]:
    """The first split of SPLITS whose images include every truth id, with its listing (`list_split(split)`:
    the listing and its ids); DataError naming `truth_source` when none does (`where(split)`: its images)."""
    for split in SPLITS:
        listing, ids = list_split(split)
        if truth_ids <= ids:
            return split, listing
    example = min(truth_ids)
    raise DataError(f"{truth_source}: ids such as {example} have no image under {where('test')} nor {where('train')}")


def check_ids_have_images(ids: set[str], image_ids: set[str], source: Path, where: str) -> None:
    """DataError naming `source` unless each of its ids names an image of the scored split (`where`); a
    prediction for an image without truth is ignored, one for no image is this error."""
    orphans = sorted(ids - image_ids)
    if orphans:
        raise DataError(f"{source}: id {orphans[0]} has no image in {where} ({len(orphans)} such ids)")


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
    def list_split(name: str) -> tuple[pd.DataFrame, set[str]]:
        index = scan_split(data_dir, name, max_pixels)
        return index, set(index["id"])

    def where(name: str) -> str:
        return f"{data_dir}/{name}"

    if split is None:
        split, index = find_split(set(truth["id"]), truth_csv, list_split, where)
    else:
        index = list_split(split)[0]
    check_ids_have_images(set(pred["id"]), set(index["id"]), pred_csv, where(split))
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
