"""Synthetic abdominal MRI in the exact Kaggle layout (the project's default data when no download exists).

Every case has one anatomy (body outline, spine, liver, kidneys and the three labelled organs as 3D
tubes with varying radius: a J-shaped stomach high in z, a colon framing the abdomen, a long random
small-bowel walk in the middle); each of its days re-renders that anatomy with small shifts and
deformations, a new intensity scale, bias field and noise. All randomness comes from generators
seeded by (seed, case, day), so the bytes do not depend on the worker count.

Label faults for robustness work: `ambiguous_tail` cuts the last labelled slices of every train
case-day (the image still shows the organ), `bad_case_days` spoils the labels of named case-days.
The test truth is always clean.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import re
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numba
import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.interpolate import CubicSpline

from src.core.atomic import atomic_path
from src.core.errors import DataError
from src.core.ids import CLASSES
from src.data import rle
from src.data.layout import slice_id

REAL_SIZES = ((266, 266, 1.50), (360, 310, 1.50), (234, 234, 1.50), (276, 276, 1.63))  # W, H, spacing
REAL_SIZE_WEIGHTS = (0.5, 0.3, 0.1, 0.1)  # after each size has had one case
REAL_SLICES = (144, 80)  # the first is the majority
DEFAULT_SPACING = 1.50
MAX_CASE_ID = 150
MAX_DAY = 40
DAY_WEIGHTS = (0.15, 0.2, 0.3, 0.2, 0.15)  # probability of 1..5 days
PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP)  # 2x faster than the default, files as small
INLINE_VOXELS = 20_000_000  # smaller datasets are rendered in-process: starting workers costs more
SLICE_MM = 3.0  # slice thickness of a 144-slice scan of an average body
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
class SyntheticSummary:
    """What `generate` wrote."""

    out_dir: str
    truth_path: str | None
    train_cases: int
    train_case_days: int
    train_slices: int
    test_cases: int
    test_case_days: int
    test_slices: int
    empty_fraction: float  # of the train.csv rows
    bad_case_days: tuple[str, ...]


@dataclass(frozen=True)
class CaseDaySpec:
    """One case-day to render."""

    split: str
    case: int
    day: int
    day_index: int  # 0: the case's reference day (anatomy and intensity scale as drawn); others are perturbed
    width: int
    height: int
    spacing: float
    slices: int
    tail: int = 0
    bad: bool = False

    @property
    def case_day(self) -> str:
        return f"case{self.case}_day{self.day}"


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


# ----------------------------------------------------------------------------- smooth random fields

class SmoothField:
    """Smooth zero-mean random field over (Z, H, W) with about `nodes` bumps per axis, variance at most 1.

    A coarse random grid, smoothed, interpolated along z with Gaussian weights and resized bicubically
    in-plane one slice at a time.
    """

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int], nodes: tuple[int, int, int]):
        nodes = tuple(max(3, int(n)) for n in nodes)
        grid = ndimage.gaussian_filter(rng.standard_normal(nodes), 0.8, mode="wrap")
        self._grid = (grid / grid.std()).astype(np.float32)
        x = (np.arange(shape[0]) + 0.5) / shape[0] * nodes[0] - 0.5  # slice position in node units
        w = np.exp(-0.5 * (x[:, None] - np.arange(nodes[0])[None]) ** 2)
        self._kz = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
        self._wh = (shape[2], shape[1])

    def slice(self, k: int) -> np.ndarray:
        plane = np.tensordot(self._kz[k], self._grid, 1)
        return cv2.resize(plane, self._wh, interpolation=cv2.INTER_CUBIC)


def smooth_path(rng: np.random.Generator, n: int, amplitude: float, sigma: float) -> np.ndarray:
    """(n, 3) displacement that varies smoothly along a path, each axis scaled to `amplitude` RMS."""
    d = ndimage.gaussian_filter1d(rng.standard_normal((n, 3)), sigma, axis=0, mode="nearest")
    return d / (d.std(axis=0, keepdims=True) + 1e-9) * amplitude


# ----------------------------------------------------------------------------- anatomy

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


# ----------------------------------------------------------------------------- rendering

@dataclass(frozen=True)
class _Frame:
    """Where the body sits in a scan: centre and half-axes in mm, z extent of the anatomy."""

    cx: float
    cy: float
    a: float
    b: float
    dz: float  # mm per slice
    t0: float  # scan fraction of anatomical t = 0
    span: float  # scan fraction covered by anatomical t in [0, 1]


def _frame(spec: CaseDaySpec, anatomy: Anatomy, seed: int) -> _Frame:
    """Body placement of a case (size and offset) plus a small per-day jitter."""
    case_rng = np.random.default_rng([seed, spec.case, 13])
    day_rng = np.random.default_rng([seed, spec.case, spec.day, 14])
    fov_w, fov_h = spec.width * spec.spacing, spec.height * spec.spacing
    a = min(case_rng.uniform(125, 175), 0.42 * fov_w, 0.42 * fov_h / anatomy.aspect)
    a *= day_rng.uniform(0.97, 1.03)
    b = a * anatomy.aspect
    off = case_rng.uniform(-0.8, 0.8, 2) * [0.47 * fov_w - a, 0.47 * fov_h - b]
    off += day_rng.normal(0, 0.02 * a, 2)
    cx = fov_w / 2 + float(np.clip(off[0], -(0.49 * fov_w - a), 0.49 * fov_w - a))
    cy = fov_h / 2 + float(np.clip(off[1], -(0.49 * fov_h - b), 0.49 * fov_h - b))
    span = case_rng.uniform(0.46, 0.58)
    t0 = case_rng.uniform(0.14, 0.86 - span) + day_rng.normal(0, 0.015)
    dz = SLICE_MM * (a / BODY_MM) * REAL_SLICES[0] / spec.slices
    return _Frame(cx, cy, a, b, dz, t0, span)


def _to_mm(path: np.ndarray, fr: _Frame, slices: int) -> np.ndarray:
    """Anatomical (u, v, t) -> voxel-space mm (z, y, x)."""
    z = (fr.t0 + path[:, 2] * fr.span) * slices * fr.dz
    return np.stack([z, fr.cy + path[:, 1] * fr.b, fr.cx + path[:, 0] * fr.a], axis=1)


@numba.njit(cache=True)
def _paint_spheres(out, centres, radii, z, spacing, reach):
    """out[i, j] = min(out, |(z, i * spacing, j * spacing) - centre| / radius) within `reach` radii."""
    h, w = out.shape
    for n in range(centres.shape[0]):
        r = radii[n]
        dz = (z - centres[n, 0]) / r
        if abs(dz) >= reach:
            continue
        ext = reach * r
        i0 = max(int(math.ceil((centres[n, 1] - ext) / spacing)), 0)
        i1 = min(int(math.floor((centres[n, 1] + ext) / spacing)) + 1, h)
        j0 = max(int(math.ceil((centres[n, 2] - ext) / spacing)), 0)
        j1 = min(int(math.floor((centres[n, 2] + ext) / spacing)) + 1, w)
        for i in range(i0, i1):
            dy = (i * spacing - centres[n, 1]) / r
            for j in range(j0, j1):
                dx = (j * spacing - centres[n, 2]) / r
                d = math.sqrt(dz * dz + dy * dy + dx * dx)
                if d < out[i, j]:
                    out[i, j] = d


def tube_distance(centres: np.ndarray, radii: np.ndarray, z: float, shape: tuple[int, int],
                  spacing: float, reach: float = 1.4) -> np.ndarray | None:
    """Slice at height `z` (mm) of min over spheres of |p - centre| / radius (inf beyond `reach` radii).

    `centres` (N, 3) are (z, y, x) in mm with pixel (i, j) at (i * spacing, j * spacing); below 1 is
    inside the tube. Consecutive centres should be closer than half a radius for a smooth tube.
    None when no sphere reaches the slice.
    """
    near = np.abs(centres[:, 0] - z) < reach * radii
    if not near.any():
        return None
    out = np.full(shape, np.inf, dtype=np.float32)
    _paint_spheres(out, np.ascontiguousarray(centres[near], dtype=np.float64),
                   np.ascontiguousarray(radii[near], dtype=np.float64), float(z), float(spacing), float(reach))
    return out


class _Solid:
    """An ellipsoid in (u, v, t): its in-plane part precomputed, sliced at any t."""

    def __init__(self, uu: np.ndarray, vv: np.ndarray, centre, radii):
        self.plane = ((uu - centre[0]) / radii[0]) ** 2 + ((vv - centre[1]) / radii[1]) ** 2
        self.t, self.rt = centre[2], radii[2]

    def level(self, t: float) -> float:
        """Slice at t is where plane < level (nothing when level <= 0)."""
        return 1 - ((t - self.t) / self.rt) ** 2


class _Scene:
    """Everything of one case-day that is fixed across slices; `slice(k)` renders slice k."""

    def __init__(self, spec: CaseDaySpec, seed: int):
        anatomy = day_anatomy(case_anatomy(seed, spec.case), seed, spec.case, spec.day, spec.day_index)
        fr = _frame(spec, anatomy, seed)
        self.rng = np.random.default_rng([seed, spec.case, spec.day, 15])
        shape = (spec.slices, spec.height, spec.width)
        self.levels = anatomy.levels.tolist()
        self.dz, self.spacing = fr.dz, spec.spacing
        u = (np.arange(spec.width) * spec.spacing - fr.cx) / fr.a
        v = (np.arange(spec.height) * spec.spacing - fr.cy) / fr.b
        self.t = (np.arange(spec.slices) / spec.slices - fr.t0) / fr.span
        uu, vv = np.meshgrid(u.astype(np.float32), v.astype(np.float32))
        theta = np.arctan2(vv, uu)
        outline = 1 + sum(a * np.cos(k * theta + ph) for k, (a, ph) in zip((2, 3, 4), anatomy.shape_harmonics))
        rho = (np.abs(uu) ** 2.3 + np.abs(vv) ** 2.3) ** (1 / 2.3) / outline
        fat = anatomy.fat * (1 + 0.4 * np.cos(theta - anatomy.shape_harmonics[0, 1]))
        self.rho, self.rho_wall, self.rho_inner = rho, rho / (1 - fat), rho / (1 - fat - 0.04)  # < girth: inside
        self.girth = 1 + 0.05 * np.sin(2.0 * self.t + self.rng.uniform(0, 2 * np.pi))
        self.liver = _Solid(uu, vv, *LIVER)
        self.kidneys = [_Solid(uu, vv, *k) for k in KIDNEYS]
        self.spine = _spine(uu, vv)
        z, h, w = shape
        self.tex = SmoothField(self.rng, shape, (z // 6, h // 14, w // 14))
        self.fine = SmoothField(self.rng, shape, (z // 4, h // 6, w // 6))
        self.lump = SmoothField(self.rng, shape, (z // 4, h // 10, w // 10))
        self.bias = SmoothField(self.rng, shape, (3, 3, 3))
        self.noise = self.rng.uniform(0.012, 0.035)
        self.tubes = [(_to_mm(path, fr, z), radii * fr.a) for path, radii in
                      ((anatomy.colon, anatomy.colon_r), (anatomy.small_bowel, anatomy.small_bowel_r),
                       (anatomy.stomach, anatomy.stomach_r))]

    def slice(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice k: relative intensity float32 (H, W) with bias and noise, organ masks bool (3, H, W)."""
        lv, t, girth = self.levels, float(self.t[k]), float(self.girth[k])
        inner = self.rho_inner < girth
        tex, fine, lump = self.tex.slice(k), self.fine.slice(k), 0.12 * self.lump.slice(k)
        dist = [tube_distance(c, r, k * self.dz, inner.shape, self.spacing) for c, r in self.tubes]
        dist = [None if d is None else d - lump for d in dist]
        masks = np.stack([np.zeros_like(inner) if d is None else (d < 1) & inner for d in dist])
        masks[1] &= ~(masks[0] | masks[2])  # small bowel gives way to the other two
        img = lv[0] + 0.14 * tex + 0.08 * fine
        if self.liver.level(t) > 0:
            img = np.where(self.liver.plane < self.liver.level(t) + 0.3 * lump, lv[3] + 0.03 * fine, img)
        for kidney in self.kidneys:
            if kidney.level(t) > 0:
                img = np.where(kidney.plane < kidney.level(t), lv[4] + 0.05 * fine, img)
        where, bone, disc = self.spine
        img = np.where(where, disc if math.sin(2 * math.pi * k * self.dz / 30.0) > 0.6 else bone, img)
        for c, look in enumerate(self._organ_looks(dist, fine)):
            if masks[c].any():
                img = np.where(masks[c], look(), img)
        img = np.where(inner, img, np.where(self.rho_wall < girth, lv[2], lv[1] + 0.05 * fine))
        img = np.where(self.rho < girth, img, 0.0).astype(np.float32) * np.exp(0.25 * self.bias.slice(k))
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
        noise = self.rng.standard_normal(img.shape, dtype=np.float32)
        return np.abs(img + self.noise * noise), masks  # magnitude image: noise is half-normal outside

    def _organ_looks(self, dist: list[np.ndarray], fine: np.ndarray) -> tuple:
        """Lazy intensities of colon (bright wall, mottled content), small bowel (dark wall), stomach (folds)."""
        lv = self.levels
        return (lambda: np.where(dist[0] > 0.82, lv[5] + 0.15, lv[5] + 0.12 * fine),
                lambda: np.where(dist[1] > 0.82, lv[6] - 0.2, lv[6] + 0.1 * fine),
                lambda: lv[7] + 0.06 * fine - 0.1 * ((dist[2] > 0.82) & (fine > 0.5)))


def _spine(uu: np.ndarray, vv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the spine is, and its intensity at a vertebra and at a disc (body, canal, paraspinal muscles)."""
    vert = (uu / 0.12) ** 2 + ((vv - 0.6) / 0.16) ** 2 < 1
    canal = (uu / 0.05) ** 2 + ((vv - 0.82) / 0.06) ** 2 < 1
    muscle = ((np.abs(uu) - 0.22) / 0.15) ** 2 + ((vv - 0.82) / 0.13) ** 2 < 1
    bone = np.where(canal, 0.85, np.where(vert, 0.25, 0.2)).astype(np.float32)
    disc = np.where(vert & ~canal, 0.55, bone).astype(np.float32)
    return vert | canal | muscle, bone, disc


def render(spec: CaseDaySpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one case-day: image uint16 (Z, H, W) and the true organ masks bool (Z, 3, H, W)."""
    scene = _Scene(spec, seed)
    image = np.empty((spec.slices, spec.height, spec.width), dtype=np.uint16)
    masks = np.empty((spec.slices, len(CLASSES), spec.height, spec.width), dtype=bool)
    scale = _case_scale(seed, spec.case) * (scene.rng.uniform(0.8, 1.25) if spec.day_index else 1.0)
    for k in range(spec.slices):
        img, masks[k] = scene.slice(k)
        image[k] = np.clip(np.rint(img * scale), 0, 65535)
    masks[[0, -1]] = False
    return image, masks


def _case_scale(seed: int, case: int) -> float:
    """Intensity of a case: relative 1.0 maps to 700..20,000, so that the brightest voxel is ~1,000..~30,000."""
    return math.exp(np.random.default_rng([seed, case, 16]).uniform(math.log(700), math.log(20000)))


# ----------------------------------------------------------------------------- label faults

def cut_tail(masks: np.ndarray, n: int) -> np.ndarray:
    """Drop every label of the last `n` labelled slices of a (Z, 3, H, W) volume (the ambiguous tail)."""
    labelled = np.flatnonzero(masks.any(axis=(1, 2, 3)))
    out = masks.copy()
    if n and labelled.size:
        out[max(labelled[-1] - n + 1, 0):labelled[-1] + 1] = False
    return out


def spoil(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Badly wrong labels: shifted in z and in-plane, the two bowels swapped, stomach dropped on half its slices."""
    z, _, h, w = masks.shape
    sign = rng.choice([-1, 1], 3)
    shift = (int(sign[0] * max(2, z // 24)), 0, int(sign[1] * max(3, h // 12)), int(sign[2] * max(3, w // 12)))
    out = ndimage.shift(masks.view(np.uint8), shift, order=0, mode="constant", cval=0).astype(bool)
    out = out[:, [1, 0, 2]]
    out[rng.random(z) < 0.5, 2] = False
    out[[0, -1]] = False
    return out


# ----------------------------------------------------------------------------- planning

def _layouts(rng: np.random.Generator, n: int, sizes: list[tuple[int, int, float]],
             slices: list[int]) -> list[tuple[tuple[int, int, float], int]]:
    """Image size and slice count of `n` cases: every size and every minority slice count at least once."""
    weights = REAL_SIZE_WEIGHTS if tuple(sizes) == REAL_SIZES else None
    out: list = [None] * n
    for rank, i in enumerate(rng.permutation(n)):
        size = sizes[rank] if rank < len(sizes) else sizes[rng.choice(len(sizes), p=weights)]
        if rank < len(slices) - 1:
            count = slices[rank + 1]
        else:
            count = slices[0] if rng.random() < 0.85 else slices[rng.integers(len(slices))]
        out[i] = (size, count)
    return out


def _days(seed: int, case: int, forced: set[int]) -> tuple[list[int], int]:
    """Sorted scan days of a case (1-5 of them, from 0..40) plus one later day kept for the test split."""
    rng = np.random.default_rng([seed, case, 10])
    n = int(rng.choice(np.arange(1, 6), p=DAY_WEIGHTS))
    drawn = sorted(int(d) for d in rng.choice(MAX_DAY + 1, n + 1, replace=False))
    days = sorted(set(drawn[:-1]) | forced)
    return days, max(drawn[-1], days[-1] + 1)


def _case_ids(rng: np.random.Generator, cases: int, unseen: int, forced: list[int]) -> tuple[list[int], list[int]]:
    """Train and unseen test case ids from 1..150; the forced ids end up among the train cases."""
    if cases + unseen > MAX_CASE_ID:
        raise DataError(f"at most {MAX_CASE_ID} cases in all; asked for {cases} train + {unseen} unseen test")
    order = [int(c) for c in rng.permutation(np.arange(1, MAX_CASE_ID + 1))]
    train = order[:cases]
    missing = [c for c in forced if c not in train]
    free = [i for i in reversed(range(cases)) if train[i] not in forced]
    if len(missing) > len(free):
        raise DataError(f"--bad-case-day names {len(forced)} cases but only {cases} train cases are made")
    for i, c in zip(free, missing):
        train[i] = c
    test = [c for c in order[cases:] if c not in forced and c not in train][:unseen]
    return sorted(train), sorted(test)


def plan(cases: int, seed: int, test_cases: int, sizes: list[tuple[int, int, float]], slices: list[int],
         ambiguous_tail: int = 0, bad_case_days: tuple[tuple[int, int], ...] = ()) -> list[CaseDaySpec]:
    """The case-days to render, train first then test, each sorted by case and day.

    The test split holds `test_cases` cases: `test_cases // 2` train cases seen again on a later day,
    the rest unseen cases.
    """
    rng = np.random.default_rng([seed, 0])
    forced: dict[int, set[int]] = {}
    for case, day in bad_case_days:
        forced.setdefault(case, set()).add(day)
    seen = min(test_cases // 2, cases)
    train_ids, unseen_ids = _case_ids(rng, cases, test_cases - seen, sorted(forced))
    later_ids = set(int(c) for c in rng.choice(train_ids, seen, replace=False))
    bad = set(bad_case_days)
    specs_train, specs_test = [], []
    for ids, split in ((train_ids, "train"), (unseen_ids, "test")):
        for case, ((w, h, sp), count) in zip(ids, _layouts(rng, len(ids), sizes, slices)):
            days, later = _days(seed, case, forced.get(case, set()))
            target = specs_train if split == "train" else specs_test
            for i, day in enumerate(days):
                target.append(CaseDaySpec(split, case, day, i, w, h, sp, count,
                                          ambiguous_tail if split == "train" else 0, (case, day) in bad))
            if case in later_ids:
                specs_test.append(CaseDaySpec("test", case, later, len(days), w, h, sp, count))
    specs_test.sort(key=lambda s: (s.case, s.day))
    return specs_train + specs_test


# ----------------------------------------------------------------------------- writing

def slice_name(spec: CaseDaySpec, k: int) -> str:
    """File name of slice k (0-based) of a case-day: width first, spacing with 2 decimals."""
    return f"slice_{k + 1:04d}_{spec.width}_{spec.height}_{spec.spacing:.2f}_{spec.spacing:.2f}.png"


def write_case_day(spec: CaseDaySpec, seed: int, root: str | Path) -> list[tuple[str, str, str]]:
    """Render one case-day, write its PNGs under `root`, return its label rows (id, class, rle)."""
    image, masks = render(spec, seed)
    if spec.tail:
        masks = cut_tail(masks, spec.tail)
    if spec.bad:
        masks = spoil(masks, np.random.default_rng([seed, spec.case, spec.day, 17]))
    folder = Path(root) / spec.split / f"case{spec.case}" / spec.case_day / "scans"
    folder.mkdir(parents=True)
    rows = []
    for k in range(spec.slices):
        path = folder / slice_name(spec, k)
        if not cv2.imwrite(str(path), image[k], PNG_PARAMS):
            raise DataError(f"{path}: could not write the PNG")
        sid = slice_id(spec.case_day, k + 1)
        rows.extend((sid, cls, rle.encode(masks[k, c])) for c, cls in enumerate(CLASSES))
    return rows


def _write_job(job: tuple[CaseDaySpec, int, str]) -> list[tuple[str, str, str]]:
    return write_case_day(*job)


def _single_thread_cv2() -> None:
    cv2.setNumThreads(1)


def _write_all(specs: list[CaseDaySpec], seed: int, root: Path, workers: int) -> list[list[tuple[str, str, str]]]:
    """Write every case-day (in worker processes if asked); results in the order of `specs`."""
    jobs = [(spec, seed, str(root)) for spec in specs]
    if workers <= 1 or sum(s.slices * s.height * s.width for s in specs) < INLINE_VOXELS:
        return [_write_job(job) for job in jobs]
    # spawn, not fork: a fork of a process that already runs threads (torch, tqdm, a test runner)
    # can inherit a held lock and hang.
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_thread_cv2) as pool:
        return list(pool.map(_write_job, jobs))


def _write_csv(path: Path, rows: list[tuple[str, str, str]], columns: list[str]) -> None:
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def _install(tmp: Path, out: Path) -> None:
    """Move the finished dataset `tmp` onto `out`, replacing what is there."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(tmp, out)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, out)


# ----------------------------------------------------------------------------- entry point

def parse_case_day(text: str) -> tuple[int, int]:
    """`case7_day0` -> (7, 0); DataError otherwise."""
    m = re.fullmatch(r"case(\d+)_day(\d+)", text.strip())
    if not m:
        raise DataError(f"bad case-day {text!r}: expected case{{N}}_day{{D}}, e.g. case7_day0")
    return int(m.group(1)), int(m.group(2))


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`96x96,112x96` -> [(96, 96), (112, 96)] (width first), as --sizes gives them."""
    try:
        return [tuple(int(x) for x in item.lower().split("x", 1)) for item in text.split(",") if item.strip()]
    except ValueError:
        raise DataError(f"--sizes {text!r}: expected WxH pairs like 96x96,112x96") from None


def parse_slices(text: str) -> list[int]:
    """`144,80` -> [144, 80], as --slices gives them."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DataError(f"--slices {text!r}: expected integers like 144,80") from None


def _sizes(sizes) -> list[tuple[int, int, float]]:
    """(W, H) pairs -> (W, H, spacing): the real spacing for a real size, else 1.50 mm; (W, H, spacing) kept."""
    if sizes is None:
        return list(REAL_SIZES)
    known = {(w, h): sp for w, h, sp in REAL_SIZES}
    out = []
    for size in sizes:
        if len(size) not in (2, 3):
            raise DataError(f"image size {size!r}: expected (width, height) or (width, height, spacing)")
        w, h = int(size[0]), int(size[1])
        if min(w, h) < 32:
            raise DataError(f"image size {w}x{h} is too small (at least 32x32)")
        out.append((w, h, float(size[2]) if len(size) == 3 else known.get((w, h), DEFAULT_SPACING)))
    if not out:
        raise DataError("no image sizes given")
    return out


def _check_args(cases: int, test_cases: int, slices: list[int], ambiguous_tail: int, workers: int) -> None:
    if cases < 1 or test_cases < 0:
        raise DataError(f"need at least 1 train case and no negative test cases (got {cases}, {test_cases})")
    if not slices or min(slices) < 8:
        raise DataError(f"slice counts must be at least 8 (got {slices})")
    if ambiguous_tail < 0 or workers < 1:
        raise DataError(f"ambiguous tail must be >= 0 and workers >= 1 (got {ambiguous_tail}, {workers})")


def generate(out_dir: str | Path, cases: int = 12, seed: int = 0, test_cases: int = 0,
             truth_out: str | Path | None = None, sizes=None, slices=None, ambiguous_tail: int = 0,
             bad_case_days=(), workers: int = 2, overwrite: bool = False) -> SyntheticSummary:
    """Write a synthetic dataset in the Kaggle layout under `out_dir` (atomically) and its test truth.

    `sizes`: (W, H) pairs (default: the four real sizes); `slices`: slice counts, the first the
    majority (default 144, 80); `bad_case_days`: ids like "case7_day0" whose train labels are spoilt.
    The test truth (id, class, segmentation) goes to `truth_out`, default `<out_dir>_test_truth.csv`.
    """
    slices = list(REAL_SLICES if slices is None else (int(s) for s in slices))
    _check_args(cases, test_cases, slices, ambiguous_tail, workers)
    size_list = _sizes(sizes)
    bad = tuple(sorted({parse_case_day(b) for b in bad_case_days}))
    out = Path(out_dir).resolve()
    truth = Path(truth_out).resolve() if truth_out else out.parent / f"{out.name}_test_truth.csv"
    if truth.is_relative_to(out):
        raise DataError(f"{truth}: the test truth must lie outside the dataset folder {out}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")
    specs = plan(cases, seed, test_cases, size_list, slices, ambiguous_tail, bad)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = _write_all(specs, seed, tmp, workers)
        train_rows = [r for spec, rs in zip(specs, rows) if spec.split == "train" for r in rs]
        test_rows = [r for spec, rs in zip(specs, rows) if spec.split == "test" for r in rs]
        (tmp / "test").mkdir(exist_ok=True)
        _write_csv(tmp / "train.csv", train_rows, ["id", "class", "segmentation"])
        _write_csv(tmp / "sample_submission.csv", [(i, c, "") for i, c, _ in test_rows], ["id", "class", "predicted"])
        if test_rows:
            with atomic_path(truth, suffix=".csv") as tmp_truth:
                _write_csv(tmp_truth, test_rows, ["id", "class", "segmentation"])
        tmp.chmod(0o755)  # mkdtemp made it private
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(out, truth if test_rows else None, specs, train_rows, bad)


def _summary(out: Path, truth: Path | None, specs: list[CaseDaySpec], train_rows, bad) -> SyntheticSummary:
    train = [s for s in specs if s.split == "train"]
    test = [s for s in specs if s.split == "test"]
    empty = sum(1 for r in train_rows if not r[2]) / max(len(train_rows), 1)
    return SyntheticSummary(str(out), str(truth) if truth else None,
                            len({s.case for s in train}), len(train), sum(s.slices for s in train),
                            len({s.case for s in test}), len(test), sum(s.slices for s in test),
                            round(empty, 4), tuple(f"case{c}_day{d}" for c, d in bad))
