"""Scoring of 2D predictions with the dataset's "dice" metric (src.metrics.overlap): Dice, Jaccard,
precision and recall per image and class, and their means overall and per stratum (EBHI's categories).

Predictions and truth are each a Carvana CSV (`img,rle_mask`, img `<id>.jpg`, decoded at the image's
size) or a folder of label images `<id><ending>` (any image ending, subfolders for EBHI's
`<category>/<name>`) read as the dataset reads its own labels; the truth may also be the data folder's
own train labels. Every id is an image of the data folder's scored split; its header gives the size
every mask must have (another size is a DataError naming the file). As the GI scorer
(src.metrics.scoring): the split is the first of test, train that holds every truth id; every truth
image is scored, a missing prediction counting as empty; a prediction naming no image of the split is
an error, one for an image without truth is ignored; both counts are reported. Every image, label and
header is read with the --max-image-pixels cap (image_dataset's format).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from src.core.errors import DataError
from src.data import rle
from src.data.description import DatasetDescription
from src.data.formats import detect_format
from src.data.formats.base import ImageFormat, Sample, image_size
from src.data.formats.carvana import read_img_csv
from src.data.formats.files import image_files
from src.data.layout import MAX_IMAGE_PIXELS, check_max_pixels
from src.metrics.overlap import STATS, image_table, summary
from src.metrics.scoring import check_ids_have_images, find_split


class Masks(Protocol):
    """Label maps by sample id: a prediction or the truth."""

    path: Path  # named in errors
    ids: frozenset[str]

    def read(self, sample: Sample) -> np.ndarray:
        """(H, W) uint8 index map of `sample` (one of `ids`), of its image's size."""


@dataclass(frozen=True)
class CsvMasks:
    """A Carvana `img,rle_mask` CSV (src.data.formats.carvana.read_img_csv), decoded at the size of each
    image's header, which must be of at most `max_pixels` pixels."""

    path: Path
    texts: dict[str, str]
    max_pixels: int

    @classmethod
    def load(cls, path: Path, max_pixels: int) -> CsvMasks:
        df = read_img_csv(path)
        return cls(path, {Path(img).stem: text for img, text in zip(df["img"], df["rle_mask"])}, max_pixels)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.texts)

    def read(self, sample: Sample) -> np.ndarray:
        try:
            return rle.decode(self.texts[sample.id], image_size(sample.images[0], self.max_pixels))
        except ValueError as exc:
            raise DataError(f"{self.path}: row of {sample.id}: {exc}") from None


@dataclass(frozen=True)
class FolderMasks:
    """Label images `<id><ending>` of a folder, read by the dataset's format as its own labels."""

    path: Path
    files: dict[str, Path]
    fmt: ImageFormat
    description: DatasetDescription

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self.files)

    def read(self, sample: Sample) -> np.ndarray:
        return self.fmt.read_label(replace(sample, label=self.files[sample.id], label_text=None), self.description)


@dataclass(frozen=True)
class DataMasks:
    """The data folder's own train labels."""

    path: Path
    ids: frozenset[str]
    fmt: ImageFormat
    description: DatasetDescription

    def read(self, sample: Sample) -> np.ndarray:
        return self.fmt.read_label(sample, self.description)


def open_masks(path: str | Path, fmt: ImageFormat, description: DatasetDescription) -> Masks:
    """A folder of label images or a Carvana CSV, read with `fmt`'s cap; DataError naming `path` when it is neither."""
    path = Path(path)
    if path.is_dir():
        return FolderMasks(path, image_files(path, path.resolve(), recursive=True), fmt, description)
    if path.is_file() and path.suffix.lower() == ".csv":
        return CsvMasks.load(path, fmt.max_pixels)
    if not path.exists():
        raise DataError(f"{path}: not found")
    raise DataError(f"{path}: neither a folder of label images nor a .csv file")


def image_dataset(data_dir: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[ImageFormat, DatasetDescription] | None:
    """The 2D format of the data folder, reading every image, label and header with the --max-image-pixels
    cap `max_pixels`, and its description; None for the GI slices, and for a folder of no known layout
    (left to the GI scorer's own checks). DataError for a cap below 1 pixel, or an image over it."""
    check_max_pixels(max_pixels)
    try:
        fmt = detect_format(data_dir, max_pixels=max_pixels)
    except DataError:
        return None
    description = fmt.describe(Path(data_dir))
    return (fmt, description) if description.dims == "2d" else None


@dataclass(frozen=True)
class Score2D:
    """The per-image table (one row per image and class), its summary (overall, then per stratum), the
    scored split, truth images without a prediction (scored empty) and predictions without truth (ignored)."""

    table: pd.DataFrame
    summary: pd.DataFrame
    split: str
    missing: int
    ignored: int

    def record(self) -> dict:
        """The summary as one JSON object: the overall stats, the counts, and every stratum's row."""
        overall = self.summary.iloc[0]
        return {**{s: float(overall[s]) for s in STATS}, "n_images": int(overall["images"]),
                "missing_predictions": self.missing, "ignored_predictions": self.ignored, "split": self.split,
                "strata": self.summary.to_dict("records")}

    def text(self) -> str:
        """The summary table and one line of the counts."""
        return (self.summary.to_string(index=False, float_format=lambda v: f"{v:.6f}") +
                f"\nsplit {self.split}; {self.missing} truth image(s) without a prediction (scored as empty); "
                f"{self.ignored} prediction(s) without truth (ignored)")


def score_images(fmt: ImageFormat, description: DatasetDescription, data_dir: str | Path, pred: str | Path,
                 truth: str | Path | None = None, split: str | None = None) -> Score2D:
    """Score the predictions `pred` against `truth` (None: the data folder's train labels) on the images of
    `split` (None: the first of test, train holding every truth id; train for the data folder's labels)."""
    data_dir = Path(data_dir)
    if truth is None:
        truth_masks = DataMasks(data_dir, frozenset(s.id for s in fmt.samples(data_dir, "train").samples), fmt, description)
        split = split or "train"
    else:
        truth_masks = open_masks(truth, fmt, description)
    pred_masks = open_masks(pred, fmt, description)
    if not truth_masks.ids:
        raise DataError(f"{truth_masks.path}: no images to score")

    def list_split(name: str) -> tuple[dict[str, Sample], set[str]]:
        samples = {s.id: s for s in fmt.samples(data_dir, name).samples}
        return samples, set(samples)

    def where(name: str) -> str:
        return f"{data_dir} ({name})"

    if split is None:
        split, samples = find_split(set(truth_masks.ids), truth_masks.path, list_split, where)
    else:
        samples = list_split(split)[0]
    check_ids_have_images(set(truth_masks.ids), set(samples), truth_masks.path, where(split))
    check_ids_have_images(set(pred_masks.ids), set(samples), pred_masks.path, where(split))

    def pairs():
        for sid in sorted(truth_masks.ids):
            sample = samples[sid]
            truth_map = truth_masks.read(sample)
            pred_map = pred_masks.read(sample) if sid in pred_masks.ids else np.zeros_like(truth_map)
            yield sid, sample.stratum, pred_map, truth_map

    table = image_table(pairs(), description.labels)
    return Score2D(table, summary(table), split, len(truth_masks.ids - pred_masks.ids),
                   len(pred_masks.ids - truth_masks.ids))
