"""The cache of a 2D dataset: one entry per labelled image, `<cache>/<split>/<key>/` with image.npy
((H, W, C) as decoded), mask.npy (uint8 (H, W) index map) and meta.json (id, group, stratum, size;
last). Entries follow the rules of src.data.cache_entries: rewritten only when their files change,
removed when their image vanishes.

Only labelled splits are cached: a test split is read where it lies by the submission, image by image
(Carvana's 100,064 test images would take 740 GB decoded).
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from src.core.artifacts import CacheEntryFiles, cached_entries, description_path
from src.core.errors import DataError
from src.data.cache_entries import read_entry_meta, refresh_entry, remove_vanished
from src.data.description import DatasetDescription, read_description
from src.data.formats.base import ImageFormat, Sample

IMAGE_CACHE_VERSION = 1  # bump when the cached arrays or meta change meaning: every entry is rewritten
KEY_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")  # what entry_key makes
TABLE_COLUMNS = ["id", "key", "group", "stratum", "height", "width"]


def entry_key(sample_id: str) -> str:
    """The entry folder of a sample id: the id itself when it is a plain name; otherwise its characters
    outside [A-Za-z0-9._-] as '_' plus 8 hex digits of the id's hash (one folder deep, readable, unique)."""
    if KEY_RE.match(sample_id):
        return sample_id
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).lstrip(".")
    return f"{safe}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def _fingerprint(sample: Sample) -> dict:
    """Names, sizes and mtimes of the sample's files, and the hash of its label text."""
    listing = []
    for path in (*sample.images, *([sample.label] if sample.label else [])):
        stat = os.stat(path)
        listing.append(f"{path} {stat.st_size} {stat.st_mtime_ns}")
    text = hashlib.sha256(sample.label_text.encode()).hexdigest() if sample.label_text is not None else None
    return {"version": IMAGE_CACHE_VERSION, "files": hashlib.sha256("\n".join(listing).encode()).hexdigest(),
            "label_text": text}


def _cache_sample(fmt: ImageFormat, description: DatasetDescription, cache_dir: Path, split: str,
                  sample: Sample, key: str) -> str:
    def build():
        image = fmt.read_image(sample, description)
        mask = fmt.read_label(sample, description)
        if mask.shape != image.shape[:2]:
            raise DataError(f"{sample.label or sample.images[0]}: label is {mask.shape[0]}x{mask.shape[1]} (HxW) "
                            f"but its image {sample.images[0]} is {image.shape[0]}x{image.shape[1]}")
        meta = {"id": sample.id, "group": sample.group, "stratum": sample.stratum,
                "height": int(image.shape[0]), "width": int(image.shape[1])}
        return image, mask, meta

    return refresh_entry(CacheEntryFiles.of(cache_dir, split, key), _fingerprint(sample), True, build)


def prepare_images(fmt: ImageFormat, description: DatasetDescription, data_dir: Path, cache_dir: Path,
                   workers: int) -> tuple[Counter[str], list[str]]:
    """Cache the labelled (train) images of a 2D dataset; returns the counts (written, skipped, removed)
    and notes for the user (images skipped for lacking a label)."""
    listed = fmt.samples(data_dir, "train")
    keys = [entry_key(s.id) for s in listed.samples]
    twins = pd.Series(keys)[pd.Series(keys).duplicated()]
    if len(twins):
        raise DataError(f"{data_dir}: two images map to one cache entry {twins.iloc[0]!r}; rename one of them")
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(_cache_sample, fmt, description, cache_dir, "train", s, k)
                   for s, k in zip(listed.samples, keys)]
        counts = Counter(f.result() for f in futures)
    finally:
        pool.shutdown(cancel_futures=True)
    counts["removed"] = remove_vanished(cache_dir / "train", set(keys), KEY_RE)
    notes = [line] if (line := listed.report()) else []
    return counts, notes


def is_image_cache(cache_dir: str | Path) -> bool:
    """Whether a cache holds 2D images: its description says so (a cache without one holds GI volumes)."""
    return description_path(cache_dir).is_file() and read_description(cache_dir).dims == "2d"


class ImageCache:
    """Read access to a prepared 2D cache: its description, its table of samples, one sample's arrays."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)
        self.description = read_description(self.root)
        if self.description.dims != "2d":
            raise DataError(f"{self.root}: a cache of {self.description.dims} data, not of 2D images")

    def table(self, split: str = "train") -> pd.DataFrame:
        """One row per complete entry, sorted by id: id, key, group, stratum, height, width."""
        rows = []
        for key in cached_entries(self.root, split):
            meta = read_entry_meta(CacheEntryFiles.of(self.root, split, key))
            rows.append({"key": key, **{c: meta.get(c) for c in TABLE_COLUMNS if c != "key"}})
        return pd.DataFrame(rows, columns=TABLE_COLUMNS).sort_values("id", kind="stable").reset_index(drop=True)

    def load(self, key: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, C), mask (H, W)) of one entry, memory-mapped."""
        files = CacheEntryFiles.of(self.root, split, key)
        if read_entry_meta(files) is None:
            raise DataError(f"{files.folder}: not in the cache (run python -m src.prepare first)")
        try:
            image, mask = np.load(files.image, mmap_mode="r"), np.load(files.mask, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{files.folder}: unreadable cache entry ({type(exc).__name__}); run python -m src.prepare") from None
        if image.ndim != 3 or image.shape[2] != self.description.n_channels or mask.shape != image.shape[:2]:
            raise DataError(f"{files.folder}: cached image {image.shape} and mask {mask.shape} do not fit "
                            f"{self.description.n_channels} channel(s); run python -m src.prepare")
        return image, mask
