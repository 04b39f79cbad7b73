"""Turning a case-day's anatomy into a 16-bit scan and its true organ masks.

The body (outline, fat, muscle wall, spine, liver, kidneys) and the three organ tubes are drawn slice
by slice with texture, a bias field and noise; the intensity scale is drawn per case (and per day).
All randomness comes from generators seeded by (seed, case, day).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numba
import numpy as np
from scipy import ndimage

from src.data.layout import CLASSES
from src.data.synthetic.anatomy import BODY_MM, KIDNEYS, LIVER, Anatomy, case_anatomy, day_anatomy
from src.data.synthetic.planning import REAL_SLICES, CaseDaySpec

SLICE_MM = 3.0  # slice thickness of a 144-slice scan of an average body


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
