"""Boxes for the crop detector: from masks and images, unions, margins, and how well a box covers the truth.

A box is (y0, y1, x0, x1) in pixels, half-open (rows y0..y1-1, columns x0..x1-1), the form
`src.data.geometry` crops with and `src.ensembling.postprocess.crop_to_box` masks with.
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np

from src.data.geometry import Box


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of the non-zero pixels of a (..., H, W) mask, over every leading axis
    (so a (3, H, W) slice gives the box of the union of its organs); None when empty."""
    plane = np.asarray(mask).reshape(-1, *mask.shape[-2:]).any(axis=0)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def body_box(plane: np.ndarray) -> Box | None:
    """Box of the body in an 8-bit slice: Otsu threshold, then the largest 8-connected foreground
    component (drops noise specks and bright lines outside the body); None for a blank slice."""
    plane = np.ascontiguousarray(plane, dtype=np.uint8)
    if plane.max() == plane.min():
        return None
    _, binary = cv2.threshold(plane, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count < 2:
        return None
    x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
    return int(y), int(y + h), int(x), int(x + w)


def union_boxes(boxes: Iterable[Box | None]) -> Box | None:
    """Smallest box holding every given box (None entries are skipped); None when there is none."""
    kept = np.array([b for b in boxes if b is not None], dtype=np.int64).reshape(-1, 4)
    if kept.size == 0:
        return None
    return int(kept[:, 0].min()), int(kept[:, 1].max()), int(kept[:, 2].min()), int(kept[:, 3].max())


def clip_box(box: Box, height: int, width: int) -> Box:
    y0, y1, x0, x1 = box
    return max(0, y0), min(height, y1), max(0, x0), min(width, x1)


def expand_box(box: Box, height: int, width: int, margin: float = 0.0, pixels: int = 0) -> Box:
    """Grow each side by `margin` x the box's size along that axis plus `pixels`, clipped to the image."""
    y0, y1, x0, x1 = box
    dy, dx = int(np.ceil(margin * (y1 - y0))) + pixels, int(np.ceil(margin * (x1 - x0))) + pixels
    return clip_box((y0 - dy, y1 + dy, x0 - dx, x1 + dx), height, width)


def box_from_xyxy(xyxy, height: int, width: int) -> Box:
    """A detector's float (x0, y0, x1, y1) -> the integer box covering it, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    return clip_box((int(np.floor(y0)), int(np.ceil(y1)), int(np.floor(x0)), int(np.ceil(x1))), height, width)


def yolo_xywh(box: Box, height: int, width: int) -> tuple[float, float, float, float]:
    """A box as YOLO's label: centre x, centre y, width, height, each normalised to [0, 1]."""
    y0, y1, x0, x1 = box
    return (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height


def box_recall(mask: np.ndarray, box: Box) -> float:
    """Fraction of the non-zero pixels of a (..., H, W) mask inside the box; NaN for an empty mask."""
    mask = np.asarray(mask)
    total = np.count_nonzero(mask)
    if total == 0:
        return float("nan")
    y0, y1, x0, x1 = box
    return np.count_nonzero(mask[..., y0:y1, x0:x1]) / total


def box_area_fraction(box: Box, height: int, width: int) -> float:
    y0, y1, x0, x1 = box
    return max(0, y1 - y0) * max(0, x1 - x0) / (height * width)
