"""The cache builder: detect the data's layout, write its description, and read the data once into
memory-mappable entries: case-day volumes for the GI layout (below), one entry per image for a 2D
dataset (src.data.image_cache).

Each case-day becomes `<cache>/<split>/<case_day>/{image.npy, mask.npy, meta.json}` (see
src.data.volumes). meta.json carries a fingerprint of the case-day's source (PNG names, sizes and
mtimes; hash of its train.csv rows), so a re-run skips unchanged case-days, rewrites changed ones and
removes case-days that vanished from the data. A case-day is deleted before it is rewritten and its
meta.json is written last, so the cache holds either a complete case-day or none.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.artifacts import CacheEntryFiles, cached_entries
from src.core.atomic import ensure_folder
from src.core.errors import DataError
from src.data.cache_entries import refresh_entry, remove_vanished
from src.data.description import DatasetDescription, write_description
from src.data.formats import FORMAT_MODULES, detect_format
from src.data.image_cache import prepare_images
from src.data.layout import (
    CASE_DAY_RE,
    MAX_IMAGE_PIXELS,
    check_labels_match_images,
    check_max_pixels,
    masks_for_case_day,
    max_image_pixels_field,
    read_labels,
    read_slice,
    scan_split,
)
from src.data.volumes import default_cache_dir

SPLITS = ("train", "test")
CACHE_VERSION = 2  # bump when the cached arrays or meta change meaning: every case-day is rewritten


@dataclass(frozen=True)
class PrepareOptions:
    """What `python -m src.prepare` was asked."""

    data_dir: Path = field(metadata={"help": "dataset root, in one of the known layouts (see --format)"})
    cache_dir: Path | None = field(default=None, metadata={"help": "cache root (default: cache/<data folder name>)"})
    split: str = field(default="train", metadata={"choices": (*SPLITS, "all"), "help": "which split to cache"})
    workers: int = field(default=2, metadata={"help": "case-days read in parallel (default 2)"})
    max_image_pixels: int = max_image_pixels_field()
    format: str | None = field(default=None, metadata={
        "choices": FORMAT_MODULES, "help": "the data's layout (default: detected from the files)"})


@dataclass(frozen=True)
class PrepareSummary:
    """What a run did to the cache."""

    cache_dir: Path
    written: int
    skipped: int
    removed: int
    seconds: float
    description: DatasetDescription
    notes: tuple[str, ...] = ()  # what the user should know (images skipped for lacking a label)

    def line(self) -> str:
        unit = "case-days" if self.description.dims == "slices" else "images"
        lines = [f"prepare: {self.cache_dir} ({self.description.format} format): {self.written} {unit} written, "
                 f"{self.skipped} skipped, {self.removed} removed in {self.seconds:.1f} s", *self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Source:
    """Everything one case-day is built from: its slice rows (from scan_split) and its label rows."""

    split: str
    case_day: str
    slices: pd.DataFrame
    labels: pd.Series | None  # rle indexed by (id, class); None for test
    labels_sha: str | None
    csv_path: Path | None


def prepare(data_dir: str | Path, cache_dir: str | Path | None = None, split: str = "train",
            workers: int = 2, max_pixels: int = MAX_IMAGE_PIXELS, format: str | None = None) -> PrepareSummary:
    """Detect the data's layout (or check `format`), cache `split` ("train", "test" or "all"; a 2D
    dataset caches its labelled images only) and write the dataset description into the cache, last.
    DataError on any bad input, an image (a GI slice, a 2D image or label) of more than `max_pixels`
    pixels included."""
    start = time.perf_counter()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    if split not in (*SPLITS, "all"):
        raise DataError(f"unknown split {split!r} (expected train, test or all)")
    if workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    check_max_pixels(max_pixels)  # before the cache folder is made
    fmt = detect_format(data_dir, format, max_pixels)  # a 2D format reads every image and label with the cap
    description = fmt.describe(data_dir)
    cache_dir = ensure_folder(Path(cache_dir) if cache_dir is not None else default_cache_dir(data_dir))
    counts: Counter[str] = Counter()
    notes: list[str] = []
    if description.dims == "2d":
        counts, notes = prepare_images(fmt, description, data_dir, cache_dir, workers)
        if split != "train":
            notes.append("test images are not cached: the submission reads them where they are")
    else:
        for name in SPLITS if split == "all" else (split,):
            counts += _prepare_split(data_dir, cache_dir, name, workers, max_pixels)
    write_description(cache_dir, description)
    return PrepareSummary(cache_dir, counts["written"], counts["skipped"], counts["removed"],
                          time.perf_counter() - start, description, tuple(notes))


def ensure_prepared(data_dir: str | Path, cache_dir: str | Path, log=print) -> Path:
    """`cache_dir`, prepared from `data_dir` now (its train split, with the default --max-image-pixels cap)
    when it holds no train entry yet: the commands that read a cache (training, the research studies)
    prepare it themselves."""
    if not cached_entries(cache_dir, "train"):
        log(prepare(data_dir, cache_dir).line())
    return Path(cache_dir)


def _prepare_split(data_dir: Path, cache_dir: Path, split: str, workers: int, max_pixels: int) -> Counter[str]:
    sources = _sources(data_dir, split, max_pixels)
    if not sources:
        print(f"prepare: nothing to cache in {data_dir / split}")
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(_cache_case_day, cache_dir, source) for source in sources]
        outcomes = Counter(future.result() for future in futures)
    finally:
        pool.shutdown(cancel_futures=True)
    outcomes["removed"] = remove_vanished(cache_dir / split, {s.case_day for s in sources}, CASE_DAY_RE)
    return outcomes


def _sources(data_dir: Path, split: str, max_pixels: int) -> list[_Source]:
    """Validate the split's images (and train.csv for train) and group them by case-day."""
    index = scan_split(data_dir, split, max_pixels)
    if split != "train":
        return [_Source(split, cd, group, None, None, None) for cd, group in index.groupby("case_day", sort=False)]
    csv_path = data_dir / "train.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: not found (the train split needs its labels)")
    labels = read_labels(csv_path)
    check_labels_match_images(labels, index, csv_path)
    labels = labels.assign(case_day=labels["id"].map(index.set_index("id")["case_day"]))
    by_case_day = dict(tuple(labels.sort_values(["id", "class"]).groupby("case_day", sort=False)))
    sources = []
    for cd, group in index.groupby("case_day", sort=False):
        rows = by_case_day[cd][["id", "class", "rle"]]
        sha = hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()
        sources.append(_Source(split, cd, group, rows.set_index(["id", "class"])["rle"], sha, csv_path))
    return sources


def _fingerprint(source: _Source) -> dict:
    """Names, sizes and mtimes of the PNGs plus the hash of the label rows: changes when the source does."""
    listing = []
    for path in source.slices["path"]:
        stat = os.stat(path)
        listing.append(f"{Path(path).name} {stat.st_size} {stat.st_mtime_ns}")
    images_sha = hashlib.sha256("\n".join(listing).encode()).hexdigest()
    return {"version": CACHE_VERSION, "images": images_sha, "labels": source.labels_sha}


def _cache_case_day(cache_dir: Path, source: _Source) -> str:
    """Write one case-day unless its cached fingerprint matches; returns "written" or "skipped"."""
    def build():
        image, mask = _read_volume(source)
        return image.astype(np.uint16, copy=False), mask, _meta(source)

    files = CacheEntryFiles.of(cache_dir, source.split, source.case_day)
    return refresh_entry(files, _fingerprint(source), source.labels is not None, build)


def _read_volume(source: _Source) -> tuple[np.ndarray, np.ndarray | None]:
    slices = source.slices
    height, width = int(slices["height"].iloc[0]), int(slices["width"].iloc[0])
    image = np.stack([read_slice(path, height, width) for path in slices["path"]])
    if source.labels is None:
        return image, None
    mask = masks_for_case_day(source.labels, slices["id"].tolist(), height, width, source=str(source.csv_path))
    return image, mask


def _meta(source: _Source) -> dict:
    first = source.slices.iloc[0]
    return {
        "case_day": source.case_day, "case": int(first["case"]), "day": int(first["day"]), "split": source.split,
        "ids": source.slices["id"].tolist(), "slices": [int(z) for z in source.slices["slice"]],
        "height": int(first["height"]), "width": int(first["width"]),
        "sx": float(first["sx"]), "sy": float(first["sy"]),
        "has_mask": source.labels is not None,
    }
