"""A run's out-of-fold predictions, read against the truth of the cache: GI case-day volumes
(VolumeCache) or 2D images (ImageCache, each image's (K, H, W) probabilities to an index map at the
fold's threshold as validation does)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from src.core.artifacts import CacheEntryFiles
from src.core.errors import DataError
from src.data.image_cache import ImageCache
from src.data.image_samples import label_map, one_hot
from src.data.layout import load_prediction
from src.data.samples import intensity_window, normalise
from src.data.volumes import VolumeCache
from src.inference.runs import TrainedFold, TrainedRun
from src.reporting import presence
from src.reporting.runs import oof_arrays, threshold

SLICES_PER_CASE_DAY = 3  # overlay panels of one case-day
RGB = ("R", "G", "B")  # a 2D dataset's channels shown as a colour picture

Panel = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # caption, image in [0, 1], truth and pred (K, H, W)


def load_oof(path: Path, shape: tuple[int, ...], image: bool = False) -> np.ndarray:
    """The OOF probabilities of `path`, of `shape` (`image`: a 2D image's (K, H, W)) or a DataError."""
    probs = load_prediction(path, image=image)
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


def oof_file(run: TrainedRun, key: str) -> tuple[TrainedFold, Path]:
    """The fold whose OOF holds `key` (a case-day, or a 2D image's cache key) and the file."""
    found = next(((f, p) for f in run.folds.values() for k, p in oof_arrays(f) if k == key), None)
    if found is None:
        raise DataError(f"{run.path}: the OOF scores list {key} but no fold has its OOF prediction")
    return found


def overlay_panels(run: TrainedRun, cache: VolumeCache, case_day: str) -> list[Panel]:
    """The slices with the largest truth + prediction area of a case-day."""
    fold, path = oof_file(run, case_day)
    vol = cache.load(case_day)
    mask = truth(cache, case_day)
    pred = load_oof(path, mask.shape) > threshold(fold)
    area = mask.sum(axis=(1, 2, 3)) + pred.sum(axis=(1, 2, 3))
    chosen = np.sort(np.argsort(-area, kind="stable")[:SLICES_PER_CASE_DAY])
    window = intensity_window(vol.image)
    return [(f"slice index {z}", normalise(vol.image[z], window), mask[z], pred[z]) for z in chosen]


def image_maps(fold: TrainedFold, path: Path, cache: ImageCache, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, truth) (H, W) index maps of one 2D image: its OOF at the fold's threshold, its cached mask."""
    _, mask = cache.load(key)
    probs = load_oof(path, (cache.description.n_classes, *mask.shape), image=True)
    return label_map(probs, threshold(fold)), np.asarray(mask)


def image_pairs(fold: TrainedFold, cache: ImageCache, strata: dict[str, str]) -> Iterator[tuple[str, str, np.ndarray, np.ndarray]]:
    """(key, stratum, predicted map, truth map) of a fold's OOF images, `strata` the cache's key -> stratum."""
    for key, path in oof_arrays(fold):
        if key not in strata:
            raise DataError(f"{path}: image {key} is not in the cache {cache.root} (another dataset's run?)")
        yield key, strata[key], *image_maps(fold, path, cache, key)


def display_image(pixels: np.ndarray, channels: tuple[str, ...]) -> np.ndarray:
    """A cached (H, W, C) image as shown under the contours, in [0, 1]: RGB as is (uint8 / 255, deeper
    types by the image's maximum); gray or other channels, the first, windowed as a GI slice."""
    pixels = np.asarray(pixels)
    if tuple(channels) == RGB:
        peak = 255.0 if pixels.dtype == np.uint8 else max(float(pixels.max()), 1.0)
        return np.clip(pixels.astype(np.float32) / peak, 0.0, 1.0)
    first = pixels[None, :, :, 0]
    return normalise(first, intensity_window(first))[0]


def image_panel(run: TrainedRun, cache: ImageCache, key: str, caption: str) -> Panel:
    """One 2D image of the OOF with its truth and predicted classes (K, H, W)."""
    fold, path = oof_file(run, key)
    pred, mask = image_maps(fold, path, cache, key)
    image, _ = cache.load(key)
    n_classes = cache.description.n_classes
    return caption, display_image(image, cache.description.channels), one_hot(mask, n_classes) > 0, one_hot(pred, n_classes) > 0


def presence_oof(run: TrainedRun, cache: VolumeCache | ImageCache) -> tuple[np.ndarray, np.ndarray] | None:
    """(N, K) OOF presence probabilities and truth over every fold of a classifier run; None without OOF."""
    files = {cd: path for fold in run.folds.values() for cd, path in oof_arrays(fold)}
    return presence.load_presence(files, cache) if files else None
