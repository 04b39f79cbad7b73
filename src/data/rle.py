"""Run-length encoding of the competition: 1-indexed `start length` pairs over the (H, W) mask in C order.

`encode` writes the text with numba and `decode` paints runs with numba; `encode_reference` is the straightforward numpy encoder that
the fast one must match byte for byte (tests and `src.bench.metric` compare them).
"""
from __future__ import annotations

import re

import numba
import numpy as np

_DIGITS = re.compile(r"[0-9]+(?:\s+[0-9]+)*", re.ASCII)


def encode_reference(mask: np.ndarray) -> str:
    """Plain numpy encoder (the public notebooks' way): pad, diff, pair up run starts and ends."""
    flat = np.asarray(mask, dtype=bool).ravel(order="C")
    pixels = np.concatenate([[0], flat.astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


@numba.njit(cache=True)
def _write_int(buf: np.ndarray, pos: int, value: int) -> int:
    """Write `value` as ASCII digits at buf[pos:]; return the position after it."""
    start = pos
    while True:
        buf[pos] = 48 + value % 10
        value //= 10
        pos += 1
        if value == 0:
            break
    buf[start:pos] = buf[start:pos][::-1].copy()
    return pos


@numba.njit(cache=True)
def _runs_ascii(edges: np.ndarray) -> np.ndarray:
    """`start length` pairs as ASCII bytes from run edges (0-based starts, ends), built in one pass."""
    buf = np.empty(edges.size * 21, dtype=np.uint8)
    pos = 0
    for k in range(0, edges.size, 2):
        if k:
            buf[pos] = 32
            pos += 1
        pos = _write_int(buf, pos, edges[k] + 1)
        buf[pos] = 32
        pos = _write_int(buf, pos + 1, edges[k + 1] - edges[k])
    return buf[:pos]


def encode(mask: np.ndarray) -> str:
    """Encode a 2D mask (any dtype, nonzero = foreground); '' for an empty mask.

    Run edges come from one vectorised comparison of the mask with itself shifted by one; the
    text is written by numba, which is where a plain encoder spends most of its time.
    """
    flat = np.ascontiguousarray(mask).reshape(-1).astype(np.bool_, copy=False)
    if not flat.any():
        return ""
    padded = np.zeros(flat.size + 2, dtype=np.bool_)
    padded[1:-1] = flat
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return _runs_ascii(edges).tobytes().decode("ascii")


@numba.njit(cache=True)
def _paint(out: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> int:
    """Paint runs (inside `out`, as check_runs ensures) into `out`; return -1 on success or the index
    of the first run that does not start after the previous one."""
    prev_end = 0
    for r in range(starts.size):
        s = starts[r] - 1
        e = s + lengths[r]
        if s < prev_end:
            return r
        out[s:e] = 1
        prev_end = e
    return -1


def parse_runs(rle: str) -> tuple[np.ndarray, np.ndarray]:
    """Split an RLE string into (starts, lengths); ValueError names what is wrong.

    Every token must be a plain decimal integer (digits only: no sign, no point) that fits an int64.
    """
    text = "" if rle is None else str(rle).strip()
    if not text or text.lower() == "nan":
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if not _DIGITS.fullmatch(text):
        bad = next(t for t in text.split() if not _DIGITS.fullmatch(t))
        raise ValueError(f"non-integer token {bad[:20]!r} in RLE (tokens are non-negative integers)")
    try:
        numbers = np.array(text.split(), dtype=np.int64)
    except OverflowError:
        raise ValueError(f"RLE value too large in {text[:40]!r}") from None
    if numbers.size % 2:
        raise ValueError("odd number of values in RLE (need start/length pairs)")
    return numbers[0::2], numbers[1::2]


def check_runs(starts: np.ndarray, lengths: np.ndarray, size: int, shape: tuple[int, int]) -> None:
    """ValueError unless every run lies in 1..size: start >= 1, length >= 1, start + length - 1 <= size,
    compared without overflow (a start near 2**63 must not wrap around)."""
    if not starts.size:
        return
    if starts.min() < 1:
        raise ValueError("RLE start below 1 (starts are 1-indexed)")
    if lengths.min() < 1:
        r = int(np.argmin(lengths))
        raise ValueError(f"RLE run {starts[r]} {lengths[r]} has a non-positive length")
    past = (starts > size) | (lengths > size - np.minimum(starts, size) + 1)
    if past.any():
        r = int(np.flatnonzero(past)[0])
        raise ValueError(f"RLE run {starts[r]} {lengths[r]} runs past the image of {shape[0]}x{shape[1]} pixels")


def decode(rle: str, shape: tuple[int, int], order: str = "C") -> np.ndarray:
    """Decode to a uint8 mask of `shape` (H, W). ValueError for malformed runs or runs past the image.

    `order="F"` decodes column-major, as mle-bench's grader does.
    """
    starts, lengths = parse_runs(rle)
    flat = np.zeros(int(shape[0]) * int(shape[1]), dtype=np.uint8)
    check_runs(starts, lengths, flat.size, shape)
    bad = _paint(flat, starts, lengths) if starts.size else -1
    if bad >= 0:
        raise ValueError(f"RLE run {starts[bad]} {lengths[bad]} does not start after the previous run (not increasing)")
    return flat.reshape(shape, order=order)
