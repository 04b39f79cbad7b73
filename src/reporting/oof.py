"""A run's out-of-fold predictions, read against the truth of the cache."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from src.core.artifacts import CacheEntryFiles, load_prediction
from src.core.errors import DataError
from src.data.samples import intensity_window, normalise
from src.data.volumes import VolumeCache
from src.inference.runs import TrainedFold, TrainedRun
from src.reporting import presence
from src.reporting.runs import oof_arrays, threshold

SLICES_PER_CASE_DAY = 3  # overlay panels of one case-day


def load_oof(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    probs = load_prediction(path)
    if probs.shape != shape:
        raise DataError(f"{path}: OOF shape {probs.shape}, expected {shape} from the cache")
    return probs


def truth(cache: VolumeCache, case_day: str) -> np.ndarray:
    mask = cache.load(case_day).mask
    if mask is None:
        raise DataError(f"{CacheEntryFiles.of(cache.root, 'train', case_day).mask}: not in the cache (a test case-day?)")
    return np.asarray(mask) > 0


def fold_pairs(fold: TrainedFold, cache: VolumeCache) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(case_day, thresholded prediction, truth) of a fold's OOF volumes."""
    for case_day, path in oof_arrays(fold):
        mask = truth(cache, case_day)
        yield case_day, load_oof(path, mask.shape) > threshold(fold), mask


def overlay_panels(run: TrainedRun, cache: VolumeCache, case_day: str) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """The slices with the largest truth + prediction area of a case-day: (z, image, truth, pred)."""
    found = next(((f, p) for f in run.folds.values() for cd, p in oof_arrays(f) if cd == case_day), None)
    if found is None:
        raise DataError(f"{run.path}: the OOF scores list {case_day} but no fold has its OOF prediction")
    fold, path = found
    vol = cache.load(case_day)
    mask = truth(cache, case_day)
    pred = load_oof(path, mask.shape) > threshold(fold)
    area = mask.sum(axis=(1, 2, 3)) + pred.sum(axis=(1, 2, 3))
    chosen = np.sort(np.argsort(-area, kind="stable")[:SLICES_PER_CASE_DAY])
    window = intensity_window(vol.image)
    return [(int(z), normalise(vol.image[z], window), mask[z], pred[z]) for z in chosen]


def presence_oof(run: TrainedRun, cache: VolumeCache) -> tuple[np.ndarray, np.ndarray] | None:
    """(N, 3) OOF presence probabilities and truth over every fold of a classifier run; None without OOF."""
    files = {cd: path for fold in run.folds.values() for cd, path in oof_arrays(fold)}
    return presence.load_presence(files, cache) if files else None
