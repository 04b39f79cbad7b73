"""Cache of case-day volumes: `<cache>/<split>/<case_day>/{image.npy, mask.npy, meta.json}`.

image.npy is uint16 (Z, H, W); mask.npy is uint8 (Z, 3, H, W) (train split only); both are read
memory-mapped so a sampler slices them without decoding PNGs. meta.json is written last and marks
the case-day complete.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.core.artifacts import CaseDayFiles, cached_case_days
from src.core.atomic import save_npy_atomic, write_json_atomic
from src.core.errors import DataError
from src.core.ids import case_day_key


def default_cache_dir(data_dir: str | Path) -> Path:
    """`cache/<dataset folder name>` under the working directory (Kaggle's input folder is read-only)."""
    return Path("cache") / Path(data_dir).resolve().name


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


def write_case_day(cache_dir: str | Path, split: str, case_day: str, image: np.ndarray,
                   mask: np.ndarray | None, meta: dict) -> None:
    """Write one case-day atomically (arrays first, meta.json last)."""
    files = CaseDayFiles.of(cache_dir, split, case_day)
    files.folder.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(files.image, np.ascontiguousarray(image, dtype=np.uint16))
    if mask is not None:
        save_npy_atomic(files.mask, np.ascontiguousarray(mask, dtype=np.uint8))
    write_json_atomic(files.meta, meta)


def read_meta(cache_dir: str | Path, split: str, case_day: str) -> dict | None:
    path = CaseDayFiles.of(cache_dir, split, case_day).meta
    return json.loads(path.read_text()) if path.exists() else None


class VolumeCache:
    """Read access to a prepared cache."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)

    def case_days(self, split: str = "train") -> list[str]:
        """Complete case-days of a split, in (case, day) order."""
        return sorted(cached_case_days(self.root, split), key=case_day_key)

    def load(self, case_day: str, split: str = "train") -> CaseDay:
        folder = self.root / split / case_day
        meta = read_meta(self.root, split, case_day)
        if meta is None:
            raise DataError(f"{folder}: not in the cache (run python -m src.prepare first)")
        files = CaseDayFiles(folder)
        image = np.load(files.image, mmap_mode="r")
        mask = np.load(files.mask, mmap_mode="r") if files.mask.exists() else None
        return CaseDay(case_day, tuple(meta["ids"]), image, mask)

