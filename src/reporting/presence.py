"""Presence report of a classifier run (`python -m src.cls_report`).

Reads the run's out-of-fold presence probabilities, (Z, 3) per GI case-day or (K,) per 2D image
(fold<K>/oof/ with --fold, else the run's pred_oof/ when complete, else every fold's oof/), and the truth
from the cache masks (a class is present in a slice or image when it has a pixel). Writes
DIR/cls_report.csv, one row per class and their mean: slices, positives, average precision, precision /
recall / F1 / true-negative rate at --threshold, and the best F1 over thresholds with its threshold; and
DIR/cls_pr_curve.png, the precision-recall curve of each class with the --threshold point marked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from src.core import artifacts
from src.core.atomic import atomic_path
from src.core.errors import DataError
from src.data.image_cache import ImageCache, is_image_cache
from src.data.layout import CLASSES, load_prediction
from src.data.volumes import VolumeCache
from src.inference.runs import TrainedRun
from src.metrics.presence import image_presence, presence_table, slice_presence

CSV_NAME, PNG_NAME = "cls_report.csv", "cls_pr_curve.png"


def oof_files(run: TrainedRun, fold: str | None = None) -> dict[str, Path]:
    """case-day -> OOF presence file of the run (or of one fold)."""
    if fold is None:
        return run.prediction_files("oof")
    return run.select([fold], "oof")[0].dir.oof_files()


def class_names(cache: VolumeCache | ImageCache) -> tuple[str, ...]:
    """The classes whose presence a run of this cache predicts: the GI's, or the 2D dataset's labels."""
    return cache.description.labels if isinstance(cache, ImageCache) else CLASSES


def unit_of(cache: VolumeCache | ImageCache) -> str:
    """What one presence row is: a GI slice, or a 2D image."""
    return "images" if isinstance(cache, ImageCache) else "slices"


def _pairs(files: dict[str, Path], cache: VolumeCache | ImageCache):
    """(file, probabilities, truth) of each entry of `files`, in cache order: a GI case-day's (Z, 3) per
    slice, or a 2D image's (K,)."""
    if isinstance(cache, ImageCache):
        k = cache.description.n_classes
        for key in [key for key in cache.table()["key"] if key in files]:
            yield files[key], artifacts.load_prediction(files[key], image=True), image_presence(cache.load(key)[1], k)
    else:
        for cd in [cd for cd in cache.case_days("train") if cd in files]:
            yield files[cd], load_prediction(files[cd]), slice_presence(cache.load(cd).mask)


def load_presence(files: dict[str, Path], cache: VolumeCache | ImageCache) -> tuple[np.ndarray, np.ndarray]:
    """Stacked (N, K) probabilities and truth over the slices of the case-days, or the 2D images, of `files`,
    in cache order."""
    probs, truth = [], []
    for path, p, t in _pairs(files, cache):
        if p.shape != t.shape:
            raise DataError(f"{path}: presence of shape {p.shape}, expected {t.shape} (is this a classifier run?)")
        probs.append(p.astype(np.float32).reshape(-1, t.shape[-1]))
        truth.append(t.reshape(-1, t.shape[-1]))
    if not probs:
        raise DataError(f"{cache.root}: none of the run's OOF case-days or images is in this cache")
    return np.concatenate(probs), np.concatenate(truth)


def report_table(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
                 classes: tuple[str, ...] = CLASSES, unit: str = "slices") -> pd.DataFrame:
    """presence_table plus the best F1 over thresholds per class, and a mean row."""
    table = presence_table(probs, truth, threshold, classes, unit)
    best_f1, best_thr = [], []
    for c in range(len(classes)):
        if not truth[:, c].any():
            best_f1.append(np.nan)
            best_thr.append(np.nan)
            continue
        precision, recall, thresholds = precision_recall_curve(truth[:, c], probs[:, c])
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=precision + recall > 0)[:-1]
        best_f1.append(float(f1.max()))
        best_thr.append(float(thresholds[int(f1.argmax())]))
    table["best_f1"], table["best_threshold"] = best_f1, best_thr
    mean = table.drop(columns="class").mean(numeric_only=True).to_dict()
    return pd.concat([table, pd.DataFrame([{"class": "mean", **mean}])], ignore_index=True)


def pr_curve_figure(probs: np.ndarray, truth: np.ndarray, threshold: float, classes: tuple[str, ...],
                    path: Path) -> None:
    """Precision-recall curve per class (classes without a positive slice or image are left out), PNG."""
    fig = Figure(figsize=(5.5, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for c, name in enumerate(classes):
        if not truth[:, c].any():
            continue
        precision, recall, thresholds = precision_recall_curve(truth[:, c], probs[:, c])
        line, = ax.plot(recall, precision, label=name)
        at = int(np.searchsorted(thresholds, threshold))  # first point predicted at >= threshold
        ax.plot(recall[at], precision[at], "o", color=line.get_color())
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title=f"presence (dots: threshold {threshold:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def presence_report(run_dir: str | Path, out_dir: str | Path, fold: str | None = None,
                    cache_dir: str | Path | None = None, threshold: float = 0.5) -> pd.DataFrame:
    """Write cls_report.csv and cls_pr_curve.png under out_dir; return the table."""
    run = TrainedRun.load(run_dir)
    folder = run.cache_dir(cache_dir=cache_dir)
    cache = ImageCache(folder) if is_image_cache(folder) else VolumeCache(folder)
    files = oof_files(run, fold)
    if not files:
        raise DataError(f"{run_dir}: no out-of-fold predictions" + (f" in fold {fold}" if fold else ""))
    probs, truth = load_presence(files, cache)
    classes = class_names(cache)
    table = report_table(probs, truth, threshold, classes, unit_of(cache))
    out_dir = Path(out_dir)
    with atomic_path(out_dir / CSV_NAME) as tmp:
        table.to_csv(tmp, index=False)
    pr_curve_figure(probs, truth, threshold, classes, out_dir / PNG_NAME)
    return table
