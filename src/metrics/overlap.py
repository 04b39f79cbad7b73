"""Overlap scores of 2D label maps: Dice, Jaccard, precision and recall per image and class, and
their means overall and per stratum (the EBHI-Seg category). The "dice" metric of a dataset
description is the mean over images (and classes) of the per-image Dice: Carvana's metric.

Conventions for an image where a class is absent: Dice and Jaccard are 1 when the prediction is empty
too (0 otherwise); precision is 1 when nothing is predicted and nothing is missed, recall is 1 when
nothing is there and nothing is predicted.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

STATS = ("dice", "jaccard", "precision", "recall")
OVERALL = "all"  # the stratum label of the overall row of `summary`


def confusion(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, 3) int64 true positives, false positives, false negatives of classes 1..n_classes
    between two (H, W) index maps."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    side = n_classes + 1
    matrix = np.bincount(truth.astype(np.int64, copy=False).ravel() * side + pred.ravel(),
                         minlength=side * side)[: side * side].reshape(side, side)  # [truth, pred]
    tp = np.diag(matrix)[1:]
    return np.stack([tp, matrix.sum(axis=0)[1:] - tp, matrix.sum(axis=1)[1:] - tp], axis=1)


def overlap_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each stat of STATS per class from `confusion`'s counts, with the module's empty-class conventions."""
    tp, fp, fn = (counts[:, i].astype(np.float64) for i in range(3))

    def ratio(num, den, empty):
        return np.where(den > 0, num / np.maximum(den, 1), empty)

    return {"dice": ratio(2 * tp, 2 * tp + fp + fn, 1.0), "jaccard": ratio(tp, tp + fp + fn, 1.0),
            "precision": ratio(tp, tp + fp, (fn == 0).astype(float)),
            "recall": ratio(tp, tp + fn, (fp == 0).astype(float))}


def image_table(images: Iterable[tuple[str, str, np.ndarray, np.ndarray]], labels: tuple[str, ...]) -> pd.DataFrame:
    """One row per image and class: id, stratum, class and STATS, from (id, stratum, pred, truth) maps."""
    rows = []
    for image_id, stratum, pred, truth in images:
        stats = overlap_scores(confusion(pred, truth, len(labels)))
        rows += [{"id": image_id, "stratum": stratum, "class": name, **{s: float(stats[s][k]) for s in STATS}}
                 for k, name in enumerate(labels)]
    return pd.DataFrame(rows, columns=["id", "stratum", "class", *STATS])


def image_means(table: pd.DataFrame) -> pd.DataFrame:
    """One row per image of `image_table`'s table: id, stratum and each stat's mean over the classes."""
    return table.groupby(["id", "stratum"], as_index=False, sort=False)[list(STATS)].mean()


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of each stat over the images of each stratum (an image's value: its mean over classes), and
    over all images (stratum OVERALL, first), with the image counts."""
    per_image = image_means(table)
    overall = per_image[list(STATS)].mean().to_frame().T.assign(stratum=OVERALL, images=len(per_image))
    by = per_image.groupby("stratum", sort=True)
    strata = by[list(STATS)].mean().assign(images=by.size()).reset_index()
    rows = [overall] + ([strata] if per_image["stratum"].astype(bool).any() else [])
    return pd.concat(rows, ignore_index=True)[["stratum", "images", *STATS]]
