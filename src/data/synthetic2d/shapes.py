"""Drawing helpers shared by the 2D generators: seeded generators, outlines, filling, textures, colours.

Outlines are (n, 2) float arrays of (x, y) points around the origin; `place` moves them into an image
and `fill` rasterises them with cv2, so an image and its label are drawn from the same polygon.
"""
from __future__ import annotations

import colorsys

import cv2
import numpy as np


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """The generator of one item (a car, a view, an image), so no item depends on the order of the others."""
    return np.random.default_rng([seed, *keys])


def superellipse(axes: tuple[float, float], power: float = 2.0, n: int = 64) -> np.ndarray:
    """Outline |x/a|^p + |y/b|^p = 1: an ellipse for p = 2, boxier above."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    cos, sin = np.cos(t), np.sin(t)
    return np.stack([axes[0] * np.sign(cos) * np.abs(cos) ** (2 / power),
                     axes[1] * np.sign(sin) * np.abs(sin) ** (2 / power)], axis=1)


def star(radii: np.ndarray, turn: float = 0.0) -> np.ndarray:
    """Outline with one point per radius, evenly spaced in angle from `turn` (radians): a regular
    polygon for equal radii, a star for alternating ones."""
    t = turn + np.linspace(0, 2 * np.pi, len(radii), endpoint=False)
    return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)


def wobble(points: np.ndarray, rng: np.random.Generator, amount: float, lobes: int = 6) -> np.ndarray:
    """The outline with its radius varied smoothly by up to about `amount` (a fraction) around it."""
    t = np.arctan2(points[:, 1], points[:, 0])
    k = np.arange(1, lobes + 1)
    waves = rng.normal(size=lobes) @ np.cos(np.outer(k, t) + rng.uniform(0, 2 * np.pi, (lobes, 1))) / np.sqrt(lobes)
    return points * (1 + amount * np.clip(waves, -2, 2) / 2)[:, None]


def place(points: np.ndarray, center: tuple[float, float], angle: float = 0.0,
          scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The outline scaled per axis, turned by `angle` degrees and moved to `center` (x, y)."""
    a = np.deg2rad(angle)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points * np.asarray(scale)) @ rotation.T + np.asarray(center)


def fill(target: np.ndarray, points: np.ndarray, value) -> np.ndarray:
    """Rasterise the outline into `target` (in place) with `value`; returns `target`."""
    return cv2.fillPoly(target, [np.round(points).astype(np.int32)], value)


def region(shape: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of the outline."""
    return fill(np.zeros(shape, np.uint8), points, 1).astype(bool)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """(H, W) float32 noise of about unit spread that varies over `cell` pixels."""
    h, w = shape
    coarse = rng.standard_normal((h // cell + 3, w // cell + 3)).astype(np.float32)
    big = cv2.resize(coarse, ((w // cell + 3) * cell, (h // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
    return big[cell:cell + h, cell:cell + w]


def vertical_gradient(shape: tuple[int, int], top, bottom) -> np.ndarray:
    """(H, W, C) float32 blend from the colour `top` to `bottom`."""
    f = np.linspace(0, 1, shape[0], dtype=np.float32)[:, None, None]
    top, bottom = np.asarray(top, np.float32), np.asarray(bottom, np.float32)
    return np.broadcast_to(top + f * (bottom - top), (*shape, top.size)).copy()


def hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    """RGB 0..255 (float) of a colour given as HSV fractions."""
    return 255 * np.array(colorsys.hsv_to_rgb(hue % 1, saturation, value), np.float32)


def finish(image: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Soften edges (3x3 Gaussian), add pixel noise of `sigma` grey levels, round to uint8."""
    soft = cv2.GaussianBlur(image.astype(np.float32), (3, 3), 0)
    noisy = soft + rng.normal(0, sigma, soft.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
