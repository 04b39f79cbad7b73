"""Cache of case-day volumes: `<cache>/<split>/<case_day>/{image.npy, mask.npy, meta.json}`.

image.npy is uint16 (Z, H, W); mask.npy is uint8 (Z, 3, H, W) (train split only); both are read
memory-mapped so a sampler slices them without decoding PNGs. meta.json is written last and marks
the case-day complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.core.artifacts import CacheEntryFiles, cached_entries
from src.core.errors import DataError
from src.core.ids import case_day_key
from src.data.cache_entries import read_entry_meta, write_entry


def default_cache_dir(data_dir: str | Path) -> Path:
    """`cache/<dataset folder name>` under the working directory (Kaggle's input folder is read-only)."""
    return Path("cache") / Path(data_dir).resolve().name


def cache_dir_for(cache_dir: str | Path | None, data_dir: str | Path) -> Path:
    """The one cache-folder rule: the cache folder given, else the data folder's default cache."""
    return Path(cache_dir) if cache_dir else default_cache_dir(data_dir)


@dataclass(frozen=True)
class CaseDay:
    """One cached case-day volume."""

    case_day: str
    ids: tuple[str, ...]
    image: np.ndarray  # uint16 (Z, H, W), memory-mapped
    mask: np.ndarray | None  # uint8 (Z, 3, H, W), memory-mapped; None for test

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.image.shape

    @property
    def name(self) -> str:
        """What messages name it by (a 2D ImageInput's is its sample id)."""
        return self.case_day


def write_case_day(cache_dir: str | Path, split: str, case_day: str, image: np.ndarray,
                   mask: np.ndarray | None, meta: dict) -> None:
    """Write one case-day atomically (arrays first, meta.json last, with the arrays' fingerprints)."""
    write_entry(CacheEntryFiles.of(cache_dir, split, case_day), np.asarray(image, dtype=np.uint16), mask, meta)


def read_meta(cache_dir: str | Path, split: str, case_day: str) -> dict | None:
    """A cached case-day's meta.json; None when absent. A corrupt one is a one-line error."""
    files = CacheEntryFiles.of(cache_dir, split, case_day)
    meta = read_entry_meta(files)
    if meta is not None and not isinstance(meta.get("ids"), list):
        raise DataError(f"{files.meta}: corrupt cache entry (no ids); run python -m src.prepare to rewrite it")
    return meta


def _load_array(path: Path, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A cached array, memory-mapped; a one-line error unless it has `dtype` and `shape` (None: any size)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable cache array ({type(exc).__name__}); run python -m src.prepare") from None
    fits = array.ndim == len(shape) and all(s is None or s == n for s, n in zip(shape, array.shape))
    if array.dtype != np.dtype(dtype) or not fits:
        wanted = "x".join("?" if s is None else str(s) for s in shape)
        raise DataError(f"{path}: cached array is {array.dtype} {array.shape}, expected {dtype} {wanted}; "
                        "run python -m src.prepare")
    return array


class VolumeCache:
    """Read access to a prepared cache."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)

    def case_days(self, split: str = "train") -> list[str]:
        """Complete case-days of a split, in (case, day) order."""
        return sorted(cached_entries(self.root, split), key=case_day_key)

    def load(self, case_day: str, split: str = "train") -> CaseDay:
        folder = self.root / split / case_day
        meta = read_meta(self.root, split, case_day)
        if meta is None:
            raise DataError(f"{folder}: not in the cache (run python -m src.prepare first)")
        files = CacheEntryFiles(folder)
        image = _load_array(files.image, "uint16", (len(meta["ids"]), None, None))
        mask = _load_array(files.mask, "uint8", (image.shape[0], 3, *image.shape[1:])) if files.mask.exists() else None
        return CaseDay(case_day, tuple(meta["ids"]), image, mask)

