"""The empty-slice gates, the one implementation used by prediction and by the ensemble:
a classifier's presence probability against a threshold, and the 1st place's pixel-count rule
(a class is present in a slice when more than N of its pixels exceed p)."""
from __future__ import annotations

import numpy as np

from src.core.errors import DataError
from src.data.half import count_above


def pixel_gate(probs: np.ndarray, pixels, prob) -> np.ndarray:
    """(Z, C) bool from (Z, C, H, W) probabilities: present when more than pixels[c] exceed prob[c]."""
    counts = np.stack([count_above(probs[:, c], prob[c]) for c in range(probs.shape[1])], axis=1)
    return counts > np.asarray(pixels)


def classifier_gate(gate_probs: np.ndarray, thresholds) -> np.ndarray:
    """(Z, C) bool: presence probability at or above the per-class threshold."""
    return np.asarray(gate_probs) >= np.asarray(thresholds)


def parse_gate_rule(rule: str) -> tuple[int, float]:
    """"12:0.6" -> (12, 0.6): present when more than 12 pixels exceed 0.6."""
    try:
        pixels, prob = rule.split(":")
        return int(pixels), float(prob)
    except ValueError:
        raise DataError(f"--gate-rule {rule!r}: expected PIXELS:PROB, e.g. 12:0.6") from None


def gate_presence(probs: np.ndarray, cls_probs: np.ndarray | None = None, threshold: float = 0.5,
                  rule: tuple[int, float] | None = None) -> np.ndarray:
    """(Z, 3) bool kept by the gate: classifier presence >= threshold, and/or the pixel rule."""
    present = np.ones(probs.shape[:2], dtype=bool)
    if cls_probs is not None:
        cls_probs = np.asarray(cls_probs)
        if cls_probs.shape != probs.shape[:2]:
            raise DataError(f"gate: presence of shape {cls_probs.shape}, expected {probs.shape[:2]}")
        present &= classifier_gate(cls_probs, threshold)
    if rule is not None:
        pixels, prob = rule
        present &= pixel_gate(probs, [pixels] * probs.shape[1], [prob] * probs.shape[1])
    return present


def apply_gate(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Zero (in place) the (slice, class) planes that the (Z, 3) gate marks empty."""
    probs *= present[:, :, None, None]
    return probs


def gated(probs: np.ndarray, cls_probs: np.ndarray | None, threshold: float,
          rule: tuple[int, float] | None) -> np.ndarray:
    """A float32 copy of (Z, 3, H, W) probabilities with the gated-off planes zeroed."""
    return apply_gate(np.array(probs, dtype=np.float32), gate_presence(probs, cls_probs, threshold, rule))
