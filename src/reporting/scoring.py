"""Scores of the runs: best validation score per fold, and a segmentation run's out-of-fold metric (the
GI competition metric per case-day, or on 2D images src.metrics.overlap's Dice, Jaccard, precision and
recall per image and category)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from src.core.errors import DataError
from src.data.image_cache import ImageCache
from src.data.layout import CLASSES
from src.data.volumes import VolumeCache
from src.inference.runs import TrainedRun
from src.metrics.competition import DICE_WEIGHT, HAUSDORFF_WEIGHT, dice_rows, score_volumes
from src.metrics.overlap import image_means, image_table, summary
from src.reporting.oof import fold_pairs, image_pairs
from src.reporting.runs import best_score, oof_arrays, threshold

WORST_BEST = 2  # case-days (images) shown at each end of the ranking


def summary_table(runs: list[TrainedRun]) -> pd.DataFrame:
    """One row per run: stage, arch, best validation score per fold, their mean."""
    rows = []
    for run in runs:
        scores = {f"fold {f.fold}": best_score(f) for f in run.folds.values()}
        finite = [s for s in scores.values() if math.isfinite(s)]
        rows.append({"run": run.name, "stage": run.stage.name, "arch": run.config.get("arch", ""), **scores,
                     "mean": float(np.mean(finite)) if finite else float("nan")})
    table = pd.DataFrame(rows)
    return table[[c for c in table if c != "mean"] + ["mean"]]


@dataclass
class SegmentationResult:
    """OOF scores of a segmentation run: per case-day (worst first) and Dice per class."""

    table: pd.DataFrame  # case_day, fold, dice, hausdorff, score (+ the CSV's other columns)
    class_dice: pd.Series  # index CLASSES
    sources: dict[str, str] = field(default_factory=dict)  # fold -> "oof_scores.csv" | "recomputed"


def _read_csv(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    missing = [c for c in required if c not in table]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return table


def _tap_dice(pairs: Iterator, sink: list) -> Iterator:
    """Pass pairs through, appending each case-day's Dice rows (Z, 3) to sink."""
    for case_day, pred, truth in pairs:
        sink.append(dice_rows(pred, truth))
        yield case_day, pred, truth


def case_day_score(table: pd.DataFrame) -> pd.Series:
    """0.4 x Dice + 0.6 x (1 - Hausdorff) per row, with the metric's empty-set convention."""
    return DICE_WEIGHT * table["dice"].fillna(1.0) + HAUSDORFF_WEIGHT * (1.0 - table["hausdorff"].fillna(0.0))


def evaluate_segmentation(run: TrainedRun, cache: VolumeCache) -> SegmentationResult | None:
    """Per-case-day scores of every fold's OOF (its oof_scores.csv, else recomputed), Dice per class;
    None when the run has no OOF predictions."""
    tables, rows, sources = [], [], {}
    for fold in run.folds.values():
        if not oof_arrays(fold):
            continue
        pairs = fold_pairs(fold, cache)
        csv = fold.dir.oof_scores_path
        if csv.exists():
            rows.extend(dice_rows(pred, truth) for _, pred, truth in pairs)
            table, sources[fold.fold] = _read_csv(csv, ("case_day", "dice", "hausdorff")), csv.name
        else:
            table, sources[fold.fold] = score_volumes(_tap_dice(pairs, rows)).per_case_day, "recomputed"
        tables.append(table.assign(fold=fold.fold))
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    table["score"] = case_day_score(table)
    table = table.sort_values(["score", "case_day"], kind="stable").reset_index(drop=True)
    with warnings.catch_warnings():  # a class never present nor predicted: NaN, no warning
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        per_class = np.nanmean(np.concatenate(rows), axis=0)
    return SegmentationResult(table, pd.Series(per_class, index=list(CLASSES)), sources)


@dataclass
class ImageSegmentationResult:
    """OOF scores of a segmentation run on 2D images (src.metrics.overlap, each image's index map at its
    fold's threshold): per image (worst Dice first), the summary overall and per stratum, Dice per class."""

    table: pd.DataFrame  # key, id, stratum, fold and STATS (each the image's mean over classes)
    summary: pd.DataFrame  # overlap.summary: stratum ("all" first), images, STATS
    class_dice: pd.Series  # index: the description's labels; mean over images of each class's Dice
    thresholds: list[float]  # of the folds scored


def evaluate_images(run: TrainedRun, cache: ImageCache) -> ImageSegmentationResult | None:
    """Every fold's OOF images scored against the cache's masks; None when the run has none."""
    entries = cache.table().set_index("key")
    strata = {k: ("" if s is None else str(s)) for k, s in entries["stratum"].items()}
    folds = [f for f in run.folds.values() if oof_arrays(f)]
    if not folds:
        return None
    fold_of = {}

    def scored():
        for fold in folds:
            for key, stratum, pred, truth in image_pairs(fold, cache, strata):
                fold_of[key] = fold.fold
                yield key, stratum, pred, truth

    labels = cache.description.labels
    rows = image_table(scored(), labels)
    table = image_means(rows).rename(columns={"id": "key"})
    table.insert(1, "id", entries.loc[table["key"], "id"].to_numpy())
    table.insert(3, "fold", table["key"].map(fold_of))
    table = table.sort_values(["dice", "key"], kind="stable").reset_index(drop=True)
    class_dice = rows.groupby("class", sort=False)["dice"].mean().reindex(list(labels))
    return ImageSegmentationResult(table, summary(rows), class_dice.rename("Dice (mean over images)"),
                       sorted({threshold(f) for f in folds}))


def extremes(table: pd.DataFrame, column: str = "case_day") -> list[tuple[str, str]]:
    """(label, `column` value: a case-day, an image's key) of the worst and best rows of a worst-first
    table, each once."""
    n = len(table)
    picks = [(f"worst {i + 1}", i) for i in range(min(WORST_BEST, n))]
    picks += [(f"best {i + 1}", n - 1 - i) for i in range(min(WORST_BEST, n)) if n - 1 - i >= WORST_BEST]
    return [(label, table[column].iloc[i]) for label, i in picks]
