"""Float16 probability volumes through their uint16 bit patterns.

Predictions are saved as float16, and numpy emulates float16 arithmetic in software on most CPUs:
checking one 144 x 3 x 266 x 266 prediction for NaN, comparing it with a threshold or converting it
to float32 costs tens of milliseconds each. The same work on the bits is integer work, 10-30x
faster, and exact: a float16 is finite unless its exponent bits are all set, for float16 values
>= 0 the order of the bit patterns is the order of the values, and a table of all 65536 patterns
converts them to float32.
"""
from __future__ import annotations

import math

import numba
import numpy as np

EXPONENT = 0x7C00  # all five exponent bits set: inf or NaN
SIGN = 0x8000
HALF_TO_FLOAT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)


def bits(array: np.ndarray) -> np.ndarray:
    """The uint16 view of a float16 array (no copy)."""
    if array.dtype != np.float16:
        raise TypeError(f"expected float16, got {array.dtype}")
    return array.view(np.uint16)


def all_finite(array: np.ndarray) -> bool:
    """No NaN or inf in `array` (float16 checked on its bits)."""
    if array.dtype != np.float16:
        return bool(np.isfinite(array).all())
    return not _any_exponent_full(bits(array).reshape(-1))


@numba.njit(cache=True, nogil=True)
def _any_exponent_full(u):
    full = False
    for i in range(u.size):
        full |= (u[i] & EXPONENT) == EXPONENT
    return full


def level_bits(threshold: float) -> int:
    """The bits of the largest float16 h >= 0 with float32(h) <= float32(threshold) (threshold >= 0):
    a float16 p with bits < SIGN (p >= 0) exceeds the threshold as numpy compares them
    (`p > np.float32(threshold)`) exactly when its bits are above this level."""
    t = np.float32(threshold)
    if not t >= 0:
        raise ValueError(f"threshold {threshold} must be >= 0")
    positive = HALF_TO_FLOAT[:EXPONENT]  # 0 .. 65504, increasing with the bits
    return int(np.searchsorted(positive, t, side="right")) - 1


def above(probs: np.ndarray, threshold: float) -> np.ndarray:
    """bool `probs > threshold`: on the bits for float16 (threshold >= 0), an integer level for uint8
    (p x 255 proxies, threshold already x 255), else numpy's comparison in float32."""
    if probs.dtype == np.float16 and threshold >= 0:
        out = np.empty(probs.shape, dtype=bool)
        _above_bits(bits(probs).reshape(-1), np.uint16(level_bits(threshold)), out.reshape(-1))
        return out
    if probs.dtype == np.uint8 and threshold >= 0:
        return probs > np.uint8(min(math.floor(threshold), 255))  # an integer p > t iff p > floor(t)
    return probs > np.float32(threshold)


def count_above(probs: np.ndarray, threshold: float) -> np.ndarray:
    """(Z,) how many values of each (H, W) slice of `probs` exceed `threshold`, compared as `above`."""
    if probs.dtype == np.float16 and threshold >= 0:
        return _count_between(bits(probs), level_bits(threshold), SIGN)
    if probs.dtype == np.uint8 and threshold >= 0:
        return _count_between(probs, min(math.floor(threshold), 255), 256)
    return np.count_nonzero(probs > np.float32(threshold), axis=(1, 2))


@numba.njit(cache=True, nogil=True)
def _count_between(values, low, high):
    """(Z,) per slice of (Z, H, W) integers: how many lie strictly between low and high."""
    z, h, w = values.shape
    out = np.zeros(z, dtype=np.int64)
    for i in range(z):
        n = 0
        for j in range(h):
            for k in range(w):
                v = np.int64(values[i, j, k])
                n += (v > low) & (v < high)
        out[i] = n
    return out


@numba.njit(cache=True, nogil=True)
def _above_bits(u, level, out):
    for i in range(u.size):
        out[i] = (u[i] > level) & (u[i] < SIGN)


def add_scaled(acc: np.ndarray, probs: np.ndarray, weight: float) -> None:
    """acc += float32(weight) * float32(probs), in float32 like numpy (probs may be a strided view)."""
    if probs.dtype == np.float16 and probs.ndim == 3:
        _add_scaled_half(acc, bits(probs), np.float32(weight), HALF_TO_FLOAT)
    else:
        acc += np.float32(weight) * np.asarray(probs).astype(np.float32, copy=False)


@numba.njit(cache=True, nogil=True)
def _add_scaled_half(acc, u, weight, table):
    z, h, w = u.shape
    for i in range(z):
        for j in range(h):
            for k in range(w):
                acc[i, j, k] += weight * table[u[i, j, k]]


def mark_above(probs: np.ndarray, threshold: float, active: np.ndarray) -> bool:
    """OR into `active` (Z, H, W) the voxels where any class of float16 (Z, C, H, W) `probs` exceeds
    `threshold` (>= 0); return whether every value is finite. One pass over the bits."""
    return _mark_above(bits(probs), np.uint16(level_bits(threshold)), active)


@numba.njit(cache=True, nogil=True)
def _mark_above(u, level, active):
    full = False  # branch-free, so that it vectorises
    z, c, h, w = u.shape
    for i in range(z):
        for k in range(c):
            for j in range(h):
                for m in range(w):
                    v = u[i, k, j, m]
                    full |= (v & EXPONENT) == EXPONENT
                    active[i, j, m] |= (v > level) & (v < SIGN)
    return not full
