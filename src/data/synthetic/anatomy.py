"""A case's anatomy in body-relative coordinates: organ centre lines and radii, body shape, intensities.

Each case draws one anatomy around canonical organ shapes (a J-shaped stomach high in z, a colon
framing the abdomen, a long random small-bowel walk in the middle); each later day displaces it a little.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

BODY_MM = 150.0  # average half-width of the body
ANATOMY_MM = 250.0  # average height of anatomical t in [0, 1] (pelvis to the top of the stomach)

# Organ centre lines as control points (u, v, t): u = image right / body half-width, v = image down
# (posterior) / body half-height, t = anatomical height (0 pelvis .. 1 top of the stomach); and the
# tube radius at each point as a fraction of the body half-width.
COLON = ((-0.52, 0.12, 0.10), (-0.60, 0.04, 0.26), (-0.58, -0.06, 0.44), (-0.45, -0.24, 0.55),
         (-0.20, -0.50, 0.47), (0.10, -0.55, 0.45), (0.38, -0.42, 0.52), (0.62, -0.16, 0.64),
         (0.66, 0.06, 0.50), (0.63, 0.14, 0.30), (0.45, 0.22, 0.14), (0.15, 0.14, 0.08),
         (0.00, 0.32, 0.04), (0.00, 0.50, 0.00))
COLON_R = (0.15, 0.13, 0.12, 0.12, 0.11, 0.11, 0.11, 0.12, 0.12, 0.11, 0.10, 0.10, 0.09, 0.09)
STOMACH = ((0.38, -0.02, 0.98), (0.46, -0.18, 0.86), (0.38, -0.36, 0.74), (0.20, -0.50, 0.66),
           (0.00, -0.52, 0.63), (-0.18, -0.40, 0.64))
STOMACH_R = (0.24, 0.25, 0.21, 0.15, 0.11, 0.07)
SMALL_BOWEL_REGION = ((0.0, 0.05, 0.30), (0.48, 0.45, 0.26))  # centre, radii in (u, v, t)
SMALL_BOWEL_R = 0.07
SMALL_BOWEL_MM = 2500.0  # total length of the walk for an average body
LIVER = ((-0.45, -0.05, 0.92), (0.50, 0.62, 0.30))
KIDNEYS = (((-0.42, 0.42, 0.50), (0.14, 0.22, 0.12)), ((0.42, 0.42, 0.46), (0.14, 0.22, 0.12)))


@dataclass(frozen=True)
class Anatomy:
    """A case's (or, perturbed, a day's) anatomy in body-relative coordinates (u, v, t)."""

    aspect: float  # body half-height / half-width
    shape_harmonics: np.ndarray  # (3, 2): amplitude, phase of cos(k theta), k = 2..4
    fat: float
    colon: np.ndarray  # (N, 3) centre line; radii beside it
    colon_r: np.ndarray
    stomach: np.ndarray
    stomach_r: np.ndarray
    small_bowel: np.ndarray
    small_bowel_r: np.ndarray
    levels: np.ndarray  # relative intensities: interior, fat, muscle, liver, kidney, colon, small bowel, stomach


def smooth_path(rng: np.random.Generator, n: int, amplitude: float, sigma: float) -> np.ndarray:
    """(n, 3) displacement that varies smoothly along a path, each axis scaled to `amplitude` RMS."""
    d = ndimage.gaussian_filter1d(rng.standard_normal((n, 3)), sigma, axis=0, mode="nearest")
    return d / (d.std(axis=0, keepdims=True) + 1e-9) * amplitude


def _spline(points: np.ndarray, radii: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample a control polygon and its radii into `n` points of a smooth curve."""
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    fine = np.linspace(0, s[-1], n)
    return CubicSpline(s, points, axis=0)(fine), np.interp(fine, s, radii)


def _small_bowel_walk(rng: np.random.Generator, aspect: float) -> np.ndarray:
    """A long, persistent random walk kept inside the small-bowel region; (N, 3) in (u, v, t)."""
    centre, radii = (np.asarray(x) for x in SMALL_BOWEL_REGION)
    scale = np.array([BODY_MM, BODY_MM * aspect, ANATOMY_MM])  # mm per unit of u, v, t
    step = SMALL_BOWEL_R * BODY_MM / 2.5
    n = int(SMALL_BOWEL_MM / step)
    p = centre + rng.uniform(-0.5, 0.5, 3) * radii
    d = rng.standard_normal(3)
    out = np.empty((n, 3))
    for i in range(n):
        rel = (p - centre) / radii
        rho = np.linalg.norm(rel)
        d = d / np.linalg.norm(d) + 0.45 * rng.standard_normal(3)
        if rho > 0.8:  # steer back inward, along the normal of the region's ellipsoid
            d -= 3.0 * (rho - 0.8) * rel / rho / radii * radii.mean()
        d /= np.linalg.norm(d)
        p = p + d * step / scale
        out[i] = p
    return ndimage.gaussian_filter1d(out, 1.5, axis=0, mode="nearest")


def case_anatomy(seed: int, case: int) -> Anatomy:
    """The anatomy of one case: organ centre lines jittered around the canonical ones."""
    rng = np.random.default_rng([seed, case, 11])
    aspect = rng.uniform(0.68, 0.86)
    colon = np.asarray(COLON) + rng.normal(0, [0.04, 0.04, 0.025], (len(COLON), 3))
    stomach = np.asarray(STOMACH) + rng.normal(0, [0.04, 0.04, 0.025], (len(STOMACH), 3))
    colon, colon_r = _spline(colon, np.asarray(COLON_R) * rng.uniform(0.85, 1.15), 220)
    stomach, stomach_r = _spline(stomach, np.asarray(STOMACH_R) * rng.uniform(0.8, 1.2), 90)
    small = _small_bowel_walk(rng, aspect)
    small_r = np.full(len(small), SMALL_BOWEL_R * rng.uniform(0.85, 1.15))
    levels = np.array([rng.uniform(0.32, 0.42), rng.uniform(0.7, 0.9), rng.uniform(0.18, 0.26),
                       rng.uniform(0.22, 0.32), rng.uniform(0.45, 0.6), rng.uniform(0.38, 0.55),
                       rng.uniform(0.5, 0.72), rng.uniform(0.55, 0.9)])
    harmonics = np.stack([rng.uniform(0, 0.04, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1)
    return Anatomy(aspect, harmonics, rng.uniform(0.06, 0.15), colon, colon_r, stomach, stomach_r,
                   small, small_r, levels)


def day_anatomy(base: Anatomy, seed: int, case: int, day: int, day_index: int) -> Anatomy:
    """The same anatomy on another day: centre lines smoothly displaced, stomach filled differently."""
    if day_index == 0:
        return base
    rng = np.random.default_rng([seed, case, day, 12])

    def move(path: np.ndarray, amplitude: float) -> np.ndarray:
        shift = rng.normal(0, [0.03, 0.03, 0.02])
        return path + shift + smooth_path(rng, len(path), amplitude, len(path) / 8)

    fill = rng.uniform(0.85, 1.15)
    return Anatomy(base.aspect, base.shape_harmonics, base.fat,
                   move(base.colon, 0.025), base.colon_r * rng.uniform(0.93, 1.07),
                   move(base.stomach, 0.02), base.stomach_r * fill,
                   move(base.small_bowel, 0.02), base.small_bowel_r,
                   base.levels * rng.uniform(0.95, 1.05, base.levels.shape))
