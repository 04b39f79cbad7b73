"""Foundation benchmark: exact fast Hausdorff vs the naive one, numba RLE vs the plain numpy encoder.

Data are generated in-process (seeded): smooth organ-like blobs per class, and predictions that are
noisy, dilated, shifted or truncated versions of them with a few false-positive specks, as real
models make. Times are medians over `--repeats`; ratios are against the baseline timed in the same
process on the same data.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Callable

import numpy as np
from scipy import ndimage

from src.core.errors import DataError, run_cli
from src.data import rle
from src.data.layout import CLASSES
from src.metrics.competition import hausdorff_3d, hausdorff_naive

RLE_SHAPES = ((266, 266), (310, 360))  # (H, W) of the two commonest image sizes
PREDICTION_KINDS = ("noisy", "shifted", "truncated", "dilated")  # the naive Hausdorff is slowest on "dilated"


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: int = 4) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled linearly to `shape`."""
    coarse = rng.uniform(-1, 1, size=(cells,) * len(shape))
    return ndimage.zoom(coarse, [s / cells for s in shape], order=1, grid_mode=True, mode="nearest")


def _blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """One organ: a noisy ellipsoid spanning part of the slices, painted into a bool (Z, H, W)."""
    z, h, w = shape
    radii = np.array([rng.uniform(0.12, 0.3) * z, rng.uniform(0.06, 0.13) * h, rng.uniform(0.06, 0.13) * w])
    centre = np.array([rng.uniform(0.3, 0.7) * z, rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w])
    lo = np.maximum(np.floor(centre - 1.5 * radii).astype(int), 0)
    hi = np.minimum(np.ceil(centre + 1.5 * radii).astype(int), shape)
    grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    level = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii))
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = level + 0.6 * _smooth_noise(rng, tuple(hi - lo)) < 1
    return out


def organ_masks(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Truth-like uint8 (Z, 3, H, W) masks: one or two smooth blobs per class."""
    masks = np.zeros((shape[0], len(CLASSES), *shape[1:]), dtype=np.uint8)
    for c in range(len(CLASSES)):
        for _ in range(int(rng.integers(1, 3))):
            masks[:, c] |= _blob(rng, shape)
    return masks


def _specks(rng: np.random.Generator, truth: np.ndarray, count: int) -> np.ndarray:
    """A few small false-positive cubes in the slices where the truth has voxels."""
    out = np.zeros_like(truth)
    zs = np.flatnonzero(truth.any(axis=(1, 2)))
    for _ in range(count):
        z = int(rng.choice(zs))
        y, x = (int(rng.integers(0, n - 4)) for n in truth.shape[1:])
        out[z:z + 2, y:y + 4, x:x + 4] = True
    return out


def predict_like(rng: np.random.Generator, truth: np.ndarray, kind: str) -> np.ndarray:
    """A model-like prediction of a bool (Z, H, W) truth."""
    if kind == "noisy":
        grow = _smooth_noise(rng, truth.shape, cells=8) > 0
        pred = np.where(grow, ndimage.binary_dilation(truth), ndimage.binary_erosion(truth))
    elif kind == "dilated":
        pred = ndimage.binary_dilation(truth, np.ones((1, 3, 3), bool), iterations=2)
    elif kind == "shifted":
        pred = np.roll(truth, (1, 3, -2), axis=(0, 1, 2))
    elif kind == "truncated":
        zs = np.flatnonzero(truth.any(axis=(1, 2)))
        pred = ndimage.binary_erosion(truth)
        pred[zs[-4:]] = False
    else:
        raise ValueError(f"unknown prediction kind {kind!r}")
    return pred | _specks(rng, truth, int(rng.integers(0, 4)))


def synthetic_fold(seed: int, n: int, shape: tuple[int, int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """n (prediction, truth) pairs of class-OR bool (Z, H, W) volumes, cycling through the kinds."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        truth = organ_masks(rng, shape).any(axis=1)
        pairs.append((predict_like(rng, truth, PREDICTION_KINDS[i % len(PREDICTION_KINDS)]), truth))
    return pairs


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `fn` over `repeats` calls (the benchmarks' one timer)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _table(title: str, header: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [header] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([title, *lines[:1], "  ".join("-" * w for w in widths), *lines[1:]])


def bench_metric(pairs: list[tuple[np.ndarray, np.ndarray]], n_naive: int, repeats: int) -> str:
    """Time the fast Hausdorff on the whole fold and both versions on its first n_naive case-days."""
    subset = pairs[:n_naive]
    fast = [hausdorff_3d(p, t) for p, t in subset]
    naive = [hausdorff_naive(p, t) for p, t in subset]
    max_diff = max(abs(a - b) for a, b in zip(fast, naive))
    t_fold = median_seconds(lambda: [hausdorff_3d(p, t) for p, t in pairs], repeats)
    t_fast = median_seconds(lambda: [hausdorff_3d(p, t) for p, t in subset], repeats)
    t_naive = median_seconds(lambda: [hausdorff_naive(p, t) for p, t in subset], 1)
    rows = [
        ("hausdorff_naive (baseline)", n_naive, 1, f"{t_naive:.3f}", f"{t_naive / n_naive:.4f}", "1.0"),
        ("hausdorff_3d", n_naive, repeats, f"{t_fast:.3f}", f"{t_fast / n_naive:.4f}", f"{t_naive / t_fast:.0f}x"),
        ("hausdorff_3d (whole fold)", len(pairs), repeats, f"{t_fold:.3f}", f"{t_fold / len(pairs):.4f}", "-"),
    ]
    shape = "x".join(map(str, pairs[0][1].shape))
    kinds = ", ".join(PREDICTION_KINDS[i % len(PREDICTION_KINDS)] for i in range(n_naive))
    title = (f"(a) metric: 3D Hausdorff on synthetic {shape} case-days; naive timed on the first {n_naive} "
             f"({kinds}); max |fast - naive| = {max_diff:.2e}")
    return _table(title, ("method", "case-days", "repeats", "median s", "s/case-day", "speed-up"), rows)


def _rle_rows(masks: list[np.ndarray], repeats: int) -> list[tuple]:
    texts = [rle.encode(m) for m in masks]  # also compiles the numba kernels before timing
    shape = masks[0].shape
    megabytes = len(masks) * masks[0].size / 1e6
    t_ref = median_seconds(lambda: [rle.encode_reference(m) for m in masks], repeats)
    t_enc = median_seconds(lambda: [rle.encode(m) for m in masks], repeats)
    t_dec = median_seconds(lambda: [rle.decode(s, shape) for s in texts], repeats)
    size = f"{shape[1]}x{shape[0]}"
    return [(size, name, len(masks), f"{len(masks) / t:.0f}", f"{megabytes / t:.0f}", ratio)
            for name, t, ratio in (("encode_reference (baseline)", t_ref, "1.0"),
                                   ("encode", t_enc, f"{t_ref / t_enc:.1f}x"),
                                   ("decode", t_dec, "-"))]


def bench_rle(seed: int, n_slices: int, repeats: int) -> str:
    """Encode/decode throughput on per-class slices of organ-like volumes at the two common sizes."""
    rng = np.random.default_rng(seed)
    rows, empty = [], []
    for shape in RLE_SHAPES:
        masks = organ_masks(rng, (n_slices, *shape))
        flat = [masks[z, c] for z in range(n_slices) for c in range(len(CLASSES))]
        empty.append(np.mean([not m.any() for m in flat]))
        rows += _rle_rows(flat, repeats)
    title = f"(b) RLE throughput (W x H masks of uint8, {np.mean(empty):.0%} of them empty)"
    return _table(title, ("size", "method", "masks", "masks/s", "MB/s", "vs baseline"), rows)


def parse_size(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text)
    if not m or min(map(int, m.groups())) < 8:
        raise DataError(f"--size {text!r} is not ZxHxW with every side >= 8 (e.g. 144x266x266)")
    return tuple(int(g) for g in m.groups())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench.metric", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--size", default="144x266x266", help="case-day volume ZxHxW")
    parser.add_argument("--case-days", type=int, default=12, help="case-days in the synthetic fold")
    parser.add_argument("--naive-case-days", type=int, default=1,
                        help="of which timed with the slow naive Hausdorff too")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = parse_size(args.size)
    if args.repeats < 1 or not 1 <= args.naive_case_days <= args.case_days:
        raise DataError("need --repeats >= 1 and 1 <= --naive-case-days <= --case-days")
    pairs = synthetic_fold(args.seed, args.case_days, shape)
    print(bench_metric(pairs, args.naive_case_days, args.repeats), end="\n\n", flush=True)
    print(bench_rle(args.seed, shape[0], args.repeats))
    return 0


if __name__ == "__main__":
    run_cli(main)
