"""Presence of a class: in each slice of a GI case-day, or in a 2D image; and the classifiers' scores of
it (the cls stage's validation, its report and the ensemble's gate read these)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from src.data.layout import CLASSES


def slice_presence(mask: np.ndarray) -> np.ndarray:
    """(Z, 3, H, W) mask -> (Z, 3) bool: the class has a pixel in the slice."""
    mask = np.asarray(mask)
    return mask.reshape(*mask.shape[:2], -1).any(axis=2)


def image_presence(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """(H, W) index map -> (K,) bool: class k + 1 has a pixel in the image."""
    return np.bincount(np.asarray(mask).ravel(), minlength=n_classes + 1)[1:n_classes + 1] > 0


def presence_table(probs: np.ndarray, truth: np.ndarray, threshold: float = 0.5,
                   classes: tuple[str, ...] = CLASSES, unit: str = "slices") -> pd.DataFrame:
    """Per class (of `classes`, the GI's by default) on (N, K) presence probabilities and truth: the count
    of `unit` (slices; images on 2D data), positives, AP, and precision, recall, F1 and true-negative rate
    at `threshold` (NaN where undefined)."""
    rows = []
    for c, name in enumerate(classes):
        p, t = probs[:, c].astype(np.float64), truth[:, c].astype(bool)
        pred = p >= threshold
        tp, fp, fn, tn = (np.count_nonzero(pred & t), np.count_nonzero(pred & ~t),
                          np.count_nonzero(~pred & t), np.count_nonzero(~pred & ~t))
        precision = tp / (tp + fp) if tp + fp else np.nan
        recall = tp / (tp + fn) if tp + fn else np.nan
        rows.append({"class": name, unit: len(t), "positives": int(t.sum()),
                     "ap": average_precision_score(t, p) if t.any() else np.nan,
                     "precision": precision, "recall": recall,
                     "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan,
                     "tnr": tn / (tn + fp) if tn + fp else np.nan})
    return pd.DataFrame(rows)


def presence_score(table: pd.DataFrame) -> float:
    """Mean over classes of the AP, or of the true-negative rate for a class with no positive."""
    return float(np.where(table["positives"] > 0, table["ap"], table["tnr"]).mean())
